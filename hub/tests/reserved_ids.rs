//! Ids the broker ACL gives special rights (`hub`, `bridge-edge`, and the hub's own id) are
//! never enrolled: a certificate issued for such a device would carry the hub's or the
//! bridge's broker rights (`docs/deployment.md` §2).

use qrcash_hub::admin::{self, NewAtm};
use qrcash_hub::error::AdminError;
use qrcash_hub::handler::HandleError;
use qrcash_hub::testkit::{Rig, TestDevice};
use qrcash_protocol::{Position, PrivateKey, RejectReason};

#[test]
fn reserved_ids_are_never_enrolled() {
    let mut rig = Rig::in_memory(3);
    rig.account("hanako", 10_000);
    for id in ["hub", "bridge-edge"] {
        let mut phone = TestDevice::new(id);
        let h = rig.login(&mut phone, "hanako");
        assert!(
            matches!(
                &h.result,
                Err(HandleError::Refused {
                    reason: RejectReason::WrongAddress,
                    message
                }) if message.contains("reserved")
            ),
            "{id}: {:?}",
            h.result
        );
        assert!(
            admin::list_devices(rig.hub.store(), Some("hanako"))
                .unwrap()
                .is_empty()
        );
        let now = rig.now();
        let e = admin::enroll_atm(
            rig.hub.store_mut(),
            &NewAtm {
                id: id.into(),
                public_key: PrivateKey::generate().public().to_jwk(),
                name: "x".into(),
                address: "x".into(),
                position: Position::new(35.0, 139.0, 0.0),
                denominations: vec![1_000],
            },
            now,
        )
        .unwrap_err();
        assert!(
            matches!(&e, AdminError::Invalid(m) if m.contains("reserved")),
            "{e}"
        );
    }
    // An ordinary id still enrols.
    let mut phone = TestDevice::new("phone-1");
    assert!(rig.login(&mut phone, "hanako").result.is_ok());
}
