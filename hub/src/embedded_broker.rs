//! An in-process MQTT broker (rumqttd) so a newcomer can run the hub with nothing else:
//! plain TCP on 127.0.0.1, one MQTT 3.1.1 listener, limits generous enough for the demo.
//!
//! Not for production: rumqttd keeps no state on disk and has no access control here. It
//! runs on its own threads for the rest of the process (rumqttd has no stop).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// The embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No free port, or the thread could not start.
    #[error("embedded broker: {0}")]
    Io(#[from] std::io::Error),
    /// It did not accept connections in time.
    #[error("embedded broker did not start listening on port {0}")]
    NotListening(u16),
}

/// A running embedded broker.
#[derive(Debug, Clone)]
pub struct BrokerHandle {
    port: u16,
}

impl BrokerHandle {
    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// The broker configuration, built in code: one v4 server on `port`.
pub fn config(port: u16) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: 256 * 1024,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "qrcash-embedded-v4".into(),
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 1_000,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}

/// Starts a broker on 127.0.0.1:`port` (0: a free port) and waits until it accepts
/// connections.
pub fn start(port: u16) -> Result<BrokerHandle, BrokerError> {
    let port = if port == 0 {
        TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port()
    } else {
        port
    };
    let mut broker = Broker::new(config(port));
    std::thread::Builder::new()
        .name(format!("rumqttd-{port}"))
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(200),
        )
        .is_ok()
        {
            tracing::info!(port, "embedded broker listening");
            return Ok(BrokerHandle { port });
        }
        // Polling a socket that is not open yet: there is no event to await.
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(BrokerError::NotListening(port))
}
