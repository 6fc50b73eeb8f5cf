//! `Enrol`: a board proves it holds the one-time code the operator issued for its ATM id
//! (`qrcash-hub atm enrol-code`) and enrols the key it carries and signed with. The answer,
//! `Enrolled`, lists the hub's keys under a proof only the code's holder could make.
//!
//! A wrong proof counts against the code, which locks after [`MAX_WRONG_PROOFS`]; an expired,
//! used or locked code changes nothing. The board that used the code gets `Enrolled` again
//! for a new request signed by the same key (it lost the answer).

use qrcash_protocol::RejectReason;
use qrcash_protocol::enrol;
use qrcash_protocol::messages::{AtmDown, Enrol, Enrolled};

use crate::handler::{Ctx, Fail, Outcome, Refusal, refuse};
use crate::store::registry::{self, AtmEnrolment, EnrolmentRow};
use crate::store::rows::AtmRow;

/// Wrong proofs a code survives; the next locks it.
pub const MAX_WRONG_PROOFS: u32 = 5;

/// What an enrolment request gets, decided from the code as kept and the proof.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Enrol the key and spend the code.
    Enrol,
    /// This key already used the code: answer again.
    Again,
    /// Refused; a wrong proof also counts against the code.
    Refuse { message: String, wrong_proof: bool },
}

fn judge(code: Option<&EnrolmentRow>, kid: &str, proof_ok: bool, now: u64) -> Verdict {
    let refuse = |message: String| Verdict::Refuse {
        message,
        wrong_proof: false,
    };
    let Some(code) = code else {
        return refuse("no enrolment code was issued for this ATM".into());
    };
    if let Some((_, used_by)) = &code.used {
        return if used_by == kid && proof_ok {
            Verdict::Again
        } else {
            refuse("the enrolment code was already used: ask the hub operator for a new one".into())
        };
    }
    if now >= code.expires_at {
        return refuse(format!(
            "the enrolment code expired at {}: ask the hub operator for a new one",
            code.expires_at
        ));
    }
    if code.failures >= MAX_WRONG_PROOFS {
        return refuse(format!(
            "the enrolment code is locked after {MAX_WRONG_PROOFS} wrong proofs: ask the hub operator for a new one"
        ));
    }
    if !proof_ok {
        let left = MAX_WRONG_PROOFS - code.failures - 1;
        return Verdict::Refuse {
            message: format!("the proof does not match the enrolment code ({left} attempts left)"),
            wrong_proof: true,
        };
    }
    Verdict::Enrol
}

fn proof_key(code: &EnrolmentRow) -> Option<[u8; 32]> {
    data_encoding::HEXLOWER
        .decode(code.proof_key.as_bytes())
        .ok()?
        .try_into()
        .ok()
}

pub(in crate::handler) fn enrol(
    ctx: &mut Ctx<'_>,
    id: &str,
    atm: Option<&AtmRow>,
    e: &Enrol,
) -> Outcome {
    let kid = ctx.sender_kid.clone();
    let code = registry::enrolment(ctx.db, id)?;
    let key = code.as_ref().and_then(proof_key);
    let proof_ok = key.as_ref().is_some_and(|k| {
        e.nonce.len() <= 64 && enrol::verify_request(k, id, &kid, &e.nonce, &e.proof)
    });
    let (Some(code), Some(key)) = (code.as_ref(), key) else {
        let Verdict::Refuse { message, .. } = judge(code.as_ref(), &kid, false, ctx.now) else {
            return Err(refuse(RejectReason::Internal, "enrolment code unreadable"));
        };
        return Err(refuse(RejectReason::EnrolmentRefused, message));
    };
    match judge(Some(code), &kid, proof_ok, ctx.now) {
        Verdict::Refuse {
            message,
            wrong_proof,
        } => {
            if wrong_proof {
                registry::enrolment_failed(ctx.db, id)?;
            }
            return Err(Fail::Refused(Refusal {
                reason: RejectReason::EnrolmentRefused,
                message,
                keep_effects: wrong_proof,
                extra: Vec::new(),
            }));
        }
        Verdict::Again => {
            if atm.is_some_and(|a| a.kid != kid) {
                return Err(refuse(
                    RejectReason::EnrolmentRefused,
                    "the key that used this enrolment code was replaced since: ask the hub operator for a new code",
                ));
            }
            ctx.note(format!("enrolment of key {kid} answered again"));
        }
        Verdict::Enrol => {
            let jwk = serde_json::to_string(&e.public_key)
                .map_err(|err| refuse(RejectReason::Malformed, err.to_string()))?;
            match (atm, &code.pending) {
                (Some(_), _) => registry::set_atm_key(ctx.db, id, &jwk, &kid)?,
                (None, Some(p)) => {
                    let denominations = serde_json::to_string(&p.denominations)
                        .map_err(|err| refuse(RejectReason::Internal, err.to_string()))?;
                    registry::enroll_atm(
                        ctx.db,
                        &AtmEnrolment {
                            id,
                            name: &p.name,
                            address: &p.address,
                            position: p.position,
                            public_jwk: &jwk,
                            kid: &kid,
                            denominations: &denominations,
                        },
                        ctx.now,
                    )?;
                }
                (None, None) => {
                    return Err(refuse(
                        RejectReason::Internal,
                        "the enrolment code names no place for a new ATM",
                    ));
                }
            }
            registry::enrolment_used(ctx.db, id, &kid, ctx.now)?;
            ctx.note(format!("enrolled key {kid}"));
        }
    }
    let denominations = match (atm, &code.pending) {
        (Some(a), _) => a.denominations.clone(),
        (None, Some(p)) => p.denominations.clone(),
        (None, None) => Vec::new(),
    };
    // The signing key only: a board's roots are never retired, and the previous keys it
    // still needs for codes issued before a rotation it learns from the key set.
    let hub_keys = [ctx.keys.current().public().clone()];
    let kids: Vec<&str> = hub_keys.iter().map(|k| k.kid().as_str()).collect();
    let proof = enrol::answer_proof(&key, id, &kid, &e.nonce, &kids);
    let answer = AtmDown::Enrolled(Enrolled {
        hub_keys: hub_keys.iter().map(|k| k.to_jwk()).collect(),
        broker_urls: ctx.cfg.broker.atm_urls.clone(),
        denominations,
        proof,
    });
    Ok(vec![ctx.send_atm(id, answer)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(failures: u32, used: Option<&str>) -> EnrolmentRow {
        EnrolmentRow {
            atm_id: "atm-7".into(),
            proof_key: "00".repeat(32),
            issued_at: 100,
            expires_at: 200,
            failures,
            used: used.map(|k| (150, k.to_owned())),
            pending: None,
        }
    }

    fn refused(v: Verdict) -> (String, bool) {
        match v {
            Verdict::Refuse {
                message,
                wrong_proof,
            } => (message, wrong_proof),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_code_enrols_once_within_its_window_and_locks_after_wrong_proofs() {
        assert_eq!(judge(Some(&code(0, None)), "k", true, 150), Verdict::Enrol);
        assert_eq!(judge(Some(&code(4, None)), "k", true, 199), Verdict::Enrol);
        let (m, counted) = refused(judge(None, "k", true, 150));
        assert!(m.contains("no enrolment code") && !counted);
        let (m, counted) = refused(judge(Some(&code(0, None)), "k", true, 200));
        assert!(m.contains("expired") && !counted, "{m}");
        let (m, counted) = refused(judge(Some(&code(0, None)), "k", false, 150));
        assert!(m.contains("4 attempts left") && counted, "{m}");
        let (m, counted) = refused(judge(Some(&code(4, None)), "k", false, 150));
        assert!(m.contains("0 attempts left") && counted, "{m}");
        let (m, counted) = refused(judge(Some(&code(5, None)), "k", true, 150));
        assert!(
            m.contains("locked") && !counted,
            "a locked code refuses even the right proof: {m}"
        );
    }

    #[test]
    fn a_used_code_answers_only_its_key_again() {
        assert_eq!(
            judge(Some(&code(0, Some("k"))), "k", true, 500),
            Verdict::Again
        );
        let (m, counted) = refused(judge(Some(&code(0, Some("k"))), "other", true, 150));
        assert!(m.contains("already used") && !counted);
        let (_, counted) = refused(judge(Some(&code(0, Some("k"))), "k", false, 150));
        assert!(!counted, "a spent code counts nothing");
    }
}
