//! A dispenser that is opened when first needed and opened again after its port failed: a
//! device that was off or unplugged when the agent started, or a USB serial adapter pulled
//! out and plugged back in. Without it, the first case makes the agent exit (and a service
//! manager restart it in a loop) and the second leaves it talking to a dead file descriptor
//! until someone restarts it.
//!
//! The wrapper only decides *when* to open; the driver it opens does all the I/O. A dropped
//! driver takes its memory of the last dispense with it (the driver's journal, when
//! configured, gives the next one that record back), so after a drop the wrapper makes the
//! machine safe whatever the next driver knows: it refuses to dispense (promising, as every
//! `Err` does, that nothing moved) until a recovery has purged the note path and found the
//! machine clear.

use super::{
    CassetteId, DispenseOutcome, DispenseRequest, Dispenser, DispenserError, DispenserStatus,
    Recovery, TestDispenseOutcome,
};

/// Opens the real driver; called again after every port failure.
pub type Opener = Box<dyn FnMut() -> Result<Box<dyn Dispenser>, DispenserError> + Send>;

/// See the module documentation.
pub struct Reopening {
    open: Opener,
    inner: Option<Box<dyn Dispenser>>,
    cassettes: usize,
    /// A driver was dropped since the last recovery that left the machine clear.
    dropped: bool,
}

impl std::fmt::Debug for Reopening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reopening")
            .field("open", &self.inner.is_some())
            .field("cassettes", &self.cassettes)
            .finish()
    }
}

impl Reopening {
    /// A dispenser of `cassettes` cassettes that `open` opens. Nothing is opened here: the
    /// first call does it, and a failure to open is that call's error.
    pub fn new(cassettes: usize, open: Opener) -> Self {
        Reopening {
            open,
            inner: None,
            cassettes,
            dropped: false,
        }
    }

    /// Whether a driver is open now.
    pub fn is_open(&self) -> bool {
        self.inner.is_some()
    }

    /// Runs `call` on the driver, opening it first if needed. A line that is dead (the OS
    /// refused a read or a write, or the device acknowledged nothing) is closed, so that the
    /// next call opens it afresh: a device node that went away never comes back under the
    /// same file descriptor.
    fn with<T>(
        &mut self,
        call: impl FnOnce(&mut dyn Dispenser) -> Result<T, DispenserError>,
    ) -> Result<T, DispenserError> {
        let driver = match &mut self.inner {
            Some(d) => d,
            None => {
                let opened = (self.open)()?;
                if opened.cassette_count() != self.cassettes {
                    return Err(DispenserError::Config(format!(
                        "the dispenser has {} cassette(s), {} expected",
                        opened.cassette_count(),
                        self.cassettes
                    )));
                }
                tracing::info!("dispenser opened");
                self.inner.insert(opened)
            }
        };
        let result = call(driver.as_mut());
        if let Err(e @ (DispenserError::Io { .. } | DispenserError::NoAcknowledge { .. })) = &result
        {
            tracing::warn!(error = %e, "dispenser port failed: it is opened again on the next call");
            self.inner = None;
            self.dropped = true;
        }
        result
    }
}

impl Dispenser for Reopening {
    fn cassette_count(&self) -> usize {
        self.cassettes
    }

    fn status(&mut self) -> Result<DispenserStatus, DispenserError> {
        self.with(|d| d.status())
    }

    /// An `Err` still promises that no note moved: a driver that cannot be opened sent
    /// nothing.
    fn dispense(
        &mut self,
        reference: &str,
        request: &DispenseRequest,
    ) -> Result<DispenseOutcome, DispenserError> {
        if self.dropped {
            return Err(DispenserError::RecoveryRequired);
        }
        self.with(|d| d.dispense(reference, request))
    }

    fn purge(&mut self) -> Result<(), DispenserError> {
        self.with(|d| d.purge())
    }

    fn test_dispense(
        &mut self,
        cassette: CassetteId,
    ) -> Result<TestDispenseOutcome, DispenserError> {
        self.with(|d| d.test_dispense(cassette))
    }

    /// After a dropped driver, purges first: the new driver may not know that notes were
    /// left in the path (without the driver's journal it knows nothing of the last
    /// dispense).
    fn recover_last(&mut self) -> Result<Recovery, DispenserError> {
        let purge_first = self.dropped;
        let recovery = self.with(|d| {
            if purge_first {
                d.purge()?;
            }
            d.recover_last()
        })?;
        if recovery.machine_clear() {
            self.dropped = false;
        }
        Ok(recovery)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::dispenser::lcdm::{LcdmConfig, LcdmDispenser, LcdmModel};
    use crate::dispenser::sim::{SimConfig, Simulator};

    fn opener(path: std::path::PathBuf, opened: Arc<AtomicUsize>) -> Opener {
        Box::new(move || {
            opened.fetch_add(1, Ordering::SeqCst);
            let config = LcdmConfig {
                response_timeout_ms: 300,
                ..LcdmConfig::new(path.to_string_lossy(), LcdmModel::Lcdm2000)
            };
            Ok(Box::new(LcdmDispenser::open(config)?) as Box<dyn Dispenser>)
        })
    }

    /// The device's port appears late, and later moves (a USB adapter plugged back in gets
    /// another device node): the wrapper follows it through a stable link, as udev rules do.
    #[test]
    fn a_port_that_is_missing_or_replaced_is_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("lcdm");
        let opened = Arc::new(AtomicUsize::new(0));
        let mut d = Reopening::new(2, opener(link.clone(), opened.clone()));

        // No device yet: every call fails, nothing stays open.
        assert!(matches!(d.status(), Err(DispenserError::Open { .. })));
        assert!(!d.is_open());

        let fast = || SimConfig {
            note_interval: Duration::from_millis(1),
            ..SimConfig::lcdm2000(10, 10)
        };
        let first = Simulator::spawn(fast()).unwrap();
        std::os::unix::fs::symlink(first.port_path(), &link).unwrap();
        assert!(d.status().is_ok());
        assert!(d.is_open());
        assert!(d.status().is_ok());
        assert_eq!(opened.load(Ordering::SeqCst), 2, "opened once it was there");

        // The device goes away: the line is dead, the driver is dropped, and until something
        // is back every call fails without holding a dead port.
        drop(first);
        let err = d.status().unwrap_err();
        assert!(!d.is_open(), "a dead line closes the port: {err}");
        assert!(d.status().is_err());
        assert!(!d.is_open());

        // Plugged back in under another node.
        let second = Simulator::spawn(fast()).unwrap();
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(second.port_path(), &link).unwrap();
        assert!(d.status().is_ok());
        // After a drop nothing is dispensed until a recovery purged and found it clear.
        let request = DispenseRequest::upper(1);
        assert!(matches!(
            d.dispense("order-1", &request),
            Err(DispenserError::RecoveryRequired)
        ));
        assert_eq!(second.counters().delivered, 0);
        assert!(d.recover_last().unwrap().machine_clear());
        assert!(d.dispense("order-1", &request).is_ok());
        assert!(second.wait_for(Duration::from_secs(5), |c| c.delivered == 1));
    }
}
