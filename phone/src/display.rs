//! What the phone shows a person: the QR code (terminal and PNG) and the confirmation
//! screen with the transaction details and fraud warnings. Pure text building plus one
//! PNG writer; no network.

use std::fmt::Write as _;
use std::path::Path;

use qrcash_protocol::messages::{
    AlertAnswered, AlertOutcome, Balance, ConfirmRequest, EntryDirection, Receipt,
};
use qrcode::render::unicode::Dense1x2;
use qrcode::{EcLevel, QrCode};

use crate::error::PhoneError;

/// The token as a QR code drawn with Unicode half blocks (dark modules as dark cells on a
/// light background, so it scans from a terminal).
pub fn qr_terminal(token: &str) -> Result<String, PhoneError> {
    let code = QrCode::with_error_correction_level(token, EcLevel::M)
        .map_err(|e| PhoneError::Unexpected(format!("cannot draw the code: {e}")))?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// Saves the token as a PNG QR code (8 px per module with a quiet zone) at `path`.
pub fn save_qr_png(token: &str, path: &Path) -> Result<(), PhoneError> {
    let code = QrCode::with_error_correction_level(token, EcLevel::M)
        .map_err(|e| PhoneError::Unexpected(format!("cannot draw the code: {e}")))?;
    let image = code
        .render::<image::Luma<u8>>()
        .module_dimensions(8, 8)
        .build();
    image.save(path).map_err(|e| PhoneError::Store {
        path: path.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// The confirmation screen: where, how much, until when, every warning, and what the answer
/// must carry.
pub fn confirm_screen(req: &ConfirmRequest, now: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Withdrawal request");
    let _ = writeln!(s, "  amount : {}", req.amount);
    let _ = writeln!(s, "  ATM    : {} ({})", req.atm.name, req.atm.atm_id);
    let _ = writeln!(s, "  address: {}", req.atm.address);
    let _ = writeln!(s, "  tx     : {}", req.tx_id);
    let _ = writeln!(
        s,
        "  confirm within {} s",
        req.confirm_by.saturating_sub(now)
    );
    for w in &req.warnings {
        let _ = writeln!(s, "  WARNING [{}] ({}): {}", w.code, w.lang, w.text);
    }
    let mut needs = Vec::new();
    if req.auth.pin {
        needs.push("PIN");
    } else if req.auth.biometric {
        needs.push("biometric check or PIN");
    }
    if req.auth.location {
        needs.push("your position");
    }
    if !needs.is_empty() {
        let _ = writeln!(s, "  required: {}", needs.join(", "));
    }
    s
}

/// A receipt as one line.
pub fn receipt_line(r: &Receipt) -> String {
    format!(
        "{:?} {:?}: requested {}, settled {}, balance {} (ref {})",
        r.kind, r.status, r.requested, r.settled, r.balance, r.reference
    )
}

/// What the hub did with an answer to a new-device alert, as one line.
pub fn alert_answered_line(a: &AlertAnswered) -> String {
    let what = match a.outcome {
        AlertOutcome::Approved => "approved: it may move money now",
        AlertOutcome::NothingToLift => "approved: it was not restricted",
        AlertOutcome::Outdated => {
            "not approved: it has been re-keyed or revoked since; answer its newer alert"
        }
        AlertOutcome::RevokedAndFrozen => {
            "revoked, and the account's payments are frozen until support clears them"
        }
    };
    format!("device {}: {what} (alert {})", a.device_id, a.alert_id)
}

/// Balance and history as text.
pub fn balance_text(b: &Balance) -> String {
    let mut s = format!(
        "{}: available {}, held {}\n",
        b.account, b.available, b.held
    );
    for e in &b.history {
        let sign = match e.direction {
            EntryDirection::Credit => '+',
            EntryDirection::Debit => '-',
        };
        let _ = writeln!(s, "  {} {sign}{} {}", e.at, e.amount, e.description);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use qrcash_protocol::messages::{AtmInfo, AuthRequired, FraudWarning};
    use qrcash_protocol::{Amount, Currency, Position, TxId};

    #[test]
    fn an_alert_answer_names_the_device_and_what_happened() {
        let line = alert_answered_line(&AlertAnswered {
            alert_id: "alert-1".into(),
            device_id: "phone-x".into(),
            outcome: AlertOutcome::RevokedAndFrozen,
        });
        assert!(
            line.contains("phone-x") && line.contains("frozen"),
            "{line}"
        );
    }

    #[test]
    fn confirm_screen_shows_amount_atm_and_every_warning() {
        let req = ConfirmRequest {
            tx_id: TxId([1; 16]),
            amount: Amount::new(50_000, Currency::JPY),
            atm: AtmInfo {
                atm_id: "atm-7".into(),
                name: "Ueno Station".into(),
                address: "Taito, Tokyo".into(),
                position: Position::new(35.71, 139.77, 0.0),
            },
            presented_at: 100,
            confirm_by: 160,
            challenge: "c".into(),
            warnings: vec![FraudWarning {
                code: "phone_call".into(),
                lang: "en".into(),
                text: "Staff never ask you to operate an ATM over the phone".into(),
            }],
            auth: AuthRequired {
                pin: true,
                biometric: false,
                location: true,
            },
        };
        let text = confirm_screen(&req, 130);
        assert!(text.contains("50000 JPY"), "{text}");
        assert!(text.contains("Ueno Station (atm-7)"), "{text}");
        assert!(text.contains("within 30 s"), "{text}");
        assert!(text.contains("over the phone"), "{text}");
        assert!(text.contains("PIN, your position"), "{text}");
    }

    #[test]
    fn qr_png_decodes_back_to_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("code.png");
        save_qr_png("QC1.hello", &path).unwrap();
        let img = image::open(&path).unwrap().to_luma8();
        assert!(img.width() > 100);
        let text = qr_terminal("QC1.hello").unwrap();
        assert!(text.lines().count() > 10);
    }
}
