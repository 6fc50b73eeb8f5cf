//! Configuration of an LCDM dispenser: port, line settings, timeouts, batching, journal.
//!
//! Deserialisable so the agent's TOML can embed it as a table:
//!
//! ```toml
//! [dispenser]
//! port = "/dev/ttyUSB0"
//! model = "lcdm-2000"
//! parity = "even"           # default "none"
//! journal = "/var/lib/qrcash/dispenser-journal.json"
//! ```
//!
//! Every field but `port` has a default matching the manual.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::link::LinkConfig;
use super::message::{BatchCount, CombinedFieldOrder};
use crate::dispenser::error::DispenserError;

/// Which LCDM model is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LcdmModel {
    /// One cassette.
    #[default]
    #[serde(rename = "lcdm-1000")]
    Lcdm1000,
    /// Two cassettes (upper and lower).
    #[serde(rename = "lcdm-2000")]
    Lcdm2000,
}

impl LcdmModel {
    /// Number of cassettes.
    pub fn cassettes(self) -> usize {
        match self {
            LcdmModel::Lcdm1000 => 1,
            LcdmModel::Lcdm2000 => 2,
        }
    }
}

/// Serial parity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit (the usual LCDM setting).
    #[default]
    None,
    /// Odd parity.
    Odd,
    /// Even parity (seen on some LCDM-4000 units).
    Even,
}

/// Settings of one LCDM dispenser.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LcdmConfig {
    /// Serial device path, e.g. `/dev/ttyUSB0`. Required.
    pub port: String,
    /// Model attached.
    pub model: LcdmModel,
    /// Baud rate (default 9600).
    pub baud_rate: u32,
    /// Parity (default none).
    pub parity: Parity,
    /// Data bits, 5 to 8 (default 8).
    pub data_bits: u8,
    /// Stop bits, 1 or 2 (default 1).
    pub stop_bits: u8,
    /// Time a whole frame may take, in ms (default 200).
    pub frame_timeout_ms: u64,
    /// Time the device has to ACK a command, in ms (default 500).
    pub ack_timeout_ms: u64,
    /// Time the device has to answer status and ROM version, in ms (default 5000).
    pub response_timeout_ms: u64,
    /// Time the device has to answer a dispense, purge or test dispense, in ms
    /// (default 60000).
    pub dispense_timeout_ms: u64,
    /// Time the device has to finish a purge, in ms (default 20000). An acknowledged purge
    /// is not resent, so this bounds a recovery on a device that went silent.
    pub purge_timeout_ms: u64,
    /// Resends of a command after a NAK (default 3).
    pub command_retries: u8,
    /// NAKs for a damaged response before giving up (default 3).
    pub response_retries: u8,
    /// Notes per cassette per dispense command, 1 to 60 (default 20).
    pub max_notes_per_batch: u8,
    /// Pause between two batches, in ms (default 200).
    pub batch_pause_ms: u64,
    /// How long a device that missed the host's ACK takes to repeat its response, in ms
    /// (default 700: an ACK wait of up to 500 ms and one frame). A note-moving command goes
    /// out only after the line has been quiet this long since the last response to one.
    pub repeat_wait_ms: u64,
    /// CHK/EXIT field order of the LCDM-2000 combined dispense response.
    pub combined_field_order: CombinedFieldOrder,
    /// File where the driver keeps the outcome of the last dispense, so that a restarted
    /// driver can report it and insist on recovery. Strongly recommended in production.
    pub journal: Option<PathBuf>,
}

impl Default for LcdmConfig {
    fn default() -> Self {
        LcdmConfig {
            port: String::new(),
            model: LcdmModel::default(),
            baud_rate: 9600,
            parity: Parity::None,
            data_bits: 8,
            stop_bits: 1,
            frame_timeout_ms: 200,
            ack_timeout_ms: 500,
            response_timeout_ms: 5_000,
            dispense_timeout_ms: 60_000,
            purge_timeout_ms: 20_000,
            command_retries: 3,
            response_retries: 3,
            max_notes_per_batch: 20,
            batch_pause_ms: 200,
            repeat_wait_ms: 700,
            combined_field_order: CombinedFieldOrder::default(),
            journal: None,
        }
    }
}

impl LcdmConfig {
    /// Defaults for `model` on `port`.
    pub fn new(port: impl Into<String>, model: LcdmModel) -> Self {
        LcdmConfig {
            port: port.into(),
            model,
            ..LcdmConfig::default()
        }
    }

    /// Checks the values; `open` calls this.
    pub fn validate(&self) -> Result<(), DispenserError> {
        let bad = |msg: String| Err(DispenserError::Config(msg));
        if self.port.is_empty() {
            return bad("`port` must name the serial device, e.g. \"/dev/ttyUSB0\"".into());
        }
        if self.baud_rate == 0 {
            return bad("`baud_rate` must be positive".into());
        }
        if !(5..=8).contains(&self.data_bits) {
            return bad(format!("`data_bits` {} outside 5..=8", self.data_bits));
        }
        if !(1..=2).contains(&self.stop_bits) {
            return bad(format!("`stop_bits` {} must be 1 or 2", self.stop_bits));
        }
        if !(1..=BatchCount::MAX).contains(&self.max_notes_per_batch) {
            return bad(format!(
                "`max_notes_per_batch` {} outside 1..={}",
                self.max_notes_per_batch,
                BatchCount::MAX
            ));
        }
        for (name, ms) in [
            ("frame_timeout_ms", self.frame_timeout_ms),
            ("ack_timeout_ms", self.ack_timeout_ms),
            ("response_timeout_ms", self.response_timeout_ms),
            ("dispense_timeout_ms", self.dispense_timeout_ms),
            ("purge_timeout_ms", self.purge_timeout_ms),
            ("repeat_wait_ms", self.repeat_wait_ms),
        ] {
            if ms == 0 {
                return bad(format!("`{name}` must be positive"));
            }
        }
        Ok(())
    }

    /// The link settings derived from this configuration.
    pub fn link(&self) -> LinkConfig {
        LinkConfig {
            frame_timeout: Duration::from_millis(self.frame_timeout_ms),
            ack_timeout: Duration::from_millis(self.ack_timeout_ms),
            command_sends: self.command_retries.saturating_add(1),
            response_naks: self.response_retries,
            combined_order: self.combined_field_order,
        }
    }

    /// Response timeout for status and ROM version.
    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }

    /// Response timeout for commands that move notes.
    pub fn dispense_timeout(&self) -> Duration {
        Duration::from_millis(self.dispense_timeout_ms)
    }

    /// Response timeout for a purge.
    pub fn purge_timeout(&self) -> Duration {
        Duration::from_millis(self.purge_timeout_ms)
    }

    /// Pause between batches.
    pub fn batch_pause(&self) -> Duration {
        Duration::from_millis(self.batch_pause_ms)
    }

    /// Quiet time after a response to a note-moving command before the next one.
    pub fn repeat_wait(&self) -> Duration {
        Duration::from_millis(self.repeat_wait_ms)
    }

    pub(crate) fn serial_parity(&self) -> serialport::Parity {
        match self.parity {
            Parity::None => serialport::Parity::None,
            Parity::Odd => serialport::Parity::Odd,
            Parity::Even => serialport::Parity::Even,
        }
    }

    pub(crate) fn serial_data_bits(&self) -> serialport::DataBits {
        match self.data_bits {
            5 => serialport::DataBits::Five,
            6 => serialport::DataBits::Six,
            7 => serialport::DataBits::Seven,
            _ => serialport::DataBits::Eight,
        }
    }

    pub(crate) fn serial_stop_bits(&self) -> serialport::StopBits {
        match self.stop_bits {
            2 => serialport::StopBits::Two,
            _ => serialport::StopBits::One,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_toml_gets_manual_defaults() {
        let c: LcdmConfig = toml::from_str(r#"port = "/dev/ttyUSB0""#).unwrap();
        assert_eq!(c, LcdmConfig::new("/dev/ttyUSB0", LcdmModel::Lcdm1000));
        assert_eq!(c.baud_rate, 9600);
        assert_eq!(c.parity, Parity::None);
        assert_eq!((c.data_bits, c.stop_bits), (8, 1));
        assert_eq!(c.max_notes_per_batch, 20);
        assert_eq!(c.dispense_timeout(), Duration::from_secs(60));
        let link = c.link();
        assert_eq!(link.command_sends, 4);
        assert_eq!(link.response_naks, 3);
        assert_eq!(link.frame_timeout, Duration::from_millis(200));
        c.validate().unwrap();
    }

    #[test]
    fn embedded_table_with_every_setting() {
        #[derive(Deserialize)]
        struct AgentConfig {
            dispenser: LcdmConfig,
        }
        let a: AgentConfig = toml::from_str(
            r#"
            [dispenser]
            port = "/dev/ttyS1"
            model = "lcdm-2000"
            baud_rate = 19200
            parity = "even"
            data_bits = 7
            stop_bits = 2
            ack_timeout_ms = 300
            dispense_timeout_ms = 2000
            max_notes_per_batch = 10
            batch_pause_ms = 50
            repeat_wait_ms = 900
            combined_field_order = "per-sensor"
            journal = "/var/lib/qrcash/dispenser.json"
            "#,
        )
        .unwrap();
        let c = a.dispenser;
        c.validate().unwrap();
        assert_eq!(c.model.cassettes(), 2);
        assert_eq!(c.serial_parity(), serialport::Parity::Even);
        assert_eq!(c.serial_data_bits(), serialport::DataBits::Seven);
        assert_eq!(c.serial_stop_bits(), serialport::StopBits::Two);
        assert_eq!(c.combined_field_order, CombinedFieldOrder::PerSensor);
        assert_eq!(c.repeat_wait(), Duration::from_millis(900));
        assert_eq!(
            c.journal,
            Some(PathBuf::from("/var/lib/qrcash/dispenser.json"))
        );
    }

    #[test]
    fn typos_and_bad_values_are_rejected() {
        assert!(toml::from_str::<LcdmConfig>("port = \"/dev/x\"\nbaud = 9600").is_err());
        assert!(toml::from_str::<LcdmConfig>("port = \"/dev/x\"\nparity = \"mark\"").is_err());
        let invalid = |c: LcdmConfig| matches!(c.validate(), Err(DispenserError::Config(_)));
        let ok = LcdmConfig::new("/dev/x", LcdmModel::Lcdm1000);
        assert!(invalid(LcdmConfig::default()), "port is required");
        assert!(invalid(LcdmConfig {
            data_bits: 9,
            ..ok.clone()
        }));
        assert!(invalid(LcdmConfig {
            stop_bits: 3,
            ..ok.clone()
        }));
        assert!(invalid(LcdmConfig {
            max_notes_per_batch: 61,
            ..ok.clone()
        }));
        assert!(invalid(LcdmConfig {
            max_notes_per_batch: 0,
            ..ok.clone()
        }));
        assert!(invalid(LcdmConfig {
            ack_timeout_ms: 0,
            ..ok.clone()
        }));
        assert!(invalid(LcdmConfig { baud_rate: 0, ..ok }));
    }
}
