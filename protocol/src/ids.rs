//! 128-bit random identifiers for transactions and dispense orders.
//!
//! On the wire they are 32 lowercase hex digits; inside a QR code token a transaction id is
//! its 16 raw bytes. Account, device and ATM ids are operator-chosen strings checked by
//! [`crate::topics::validate_id`], because they appear in topic names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Fills `buf` from the operating system's random source.
///
/// # Panics
/// Only if the OS has no usable random source, in which case no key or id can be made safely.
pub fn random_bytes(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random source failed");
}

macro_rules! id128 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// A fresh random id.
            pub fn random() -> Self {
                let mut b = [0u8; 16];
                random_bytes(&mut b);
                Self(b)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                parse_hex16(s).map(Self).ok_or_else(|| {
                    format!("{} must be 32 lowercase hex digits, got {s:?}", stringify!($name))
                })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

id128!(
    /// A withdrawal transaction, chosen by the hub at registration.
    TxId
);
id128!(
    /// One dispense order; at most one dispense ever happens per order id.
    OrderId
);

fn parse_hex16(s: &str) -> Option<[u8; 16]> {
    let bytes = s.as_bytes();
    if bytes.len() != 32 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 16];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejections() {
        let id = TxId([0xab; 16]);
        assert_eq!(id.to_string(), "ab".repeat(16));
        assert_eq!(id.to_string().parse::<TxId>().unwrap(), id);
        assert!(
            "AB".repeat(16).parse::<TxId>().is_err(),
            "uppercase is not canonical"
        );
        assert!("ab".repeat(15).parse::<TxId>().is_err());
        assert!("zz".repeat(16).parse::<TxId>().is_err());
        assert_ne!(TxId::random(), TxId::random());
        let json = serde_json::to_string(&OrderId([1; 16])).unwrap();
        assert_eq!(json, format!("\"{}\"", "01".repeat(16)));
        assert_eq!(
            serde_json::from_str::<OrderId>(&json).unwrap(),
            OrderId([1; 16])
        );
    }
}
