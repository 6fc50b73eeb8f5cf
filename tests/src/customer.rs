//! What a customer does at the ATM in the end-to-end suites, with the reference phone.

use std::time::Duration;

use qrcash_hardware::camera::SyntheticCamera;
use qrcash_hub::testkit::PIN;
use qrcash_phone::{PhoneClient, requests};
use qrcash_protocol::messages::{CodeIssued, ConfirmRequest, Receipt};
use qrcash_protocol::{Clock, ManualClock, Position};

/// The customer shows `code` to the ATM's camera and confirms on the phone with the PIN at
/// `here`; returns the request the phone saw and the receipt, each awaited up to `wait`.
///
/// # Panics
/// If the confirmation request or the receipt does not come.
pub async fn show_and_confirm(
    phone: &mut PhoneClient,
    camera: &SyntheticCamera,
    code: &CodeIssued,
    clock: &ManualClock,
    here: Position,
    wait: Duration,
) -> (ConfirmRequest, Receipt) {
    camera.show(&code.token).expect("camera shows the code");
    let request = phone
        .await_confirm_request(Some(code.tx_id), wait)
        .await
        .expect("confirmation request");
    camera.clear();
    let jti = phone
        .confirm(
            &request,
            requests::evidence(Some(PIN), None, clock.now()),
            Some(here),
        )
        .await
        .expect("confirmation sent");
    let receipt = phone
        .await_receipt(&code.tx_id.to_string(), Some(&jti), wait)
        .await
        .expect("receipt");
    (request, receipt)
}
