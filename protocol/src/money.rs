//! Money: integer minor units with an ISO 4217 currency. Never floating point.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ISO 4217 alphabetic currency code such as `JPY` or `EUR`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    /// Japanese yen (no minor unit).
    pub const JPY: Currency = Currency(*b"JPY");
    /// Euro.
    pub const EUR: Currency = Currency(*b"EUR");

    /// Parses three uppercase ASCII letters.
    pub fn new(code: &str) -> Result<Self, String> {
        match code.as_bytes() {
            [a, b, c] if [a, b, c].iter().all(|x| x.is_ascii_uppercase()) => {
                Ok(Currency([*a, *b, *c]))
            }
            _ => Err(format!(
                "currency must be three uppercase letters, got {code:?}"
            )),
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Only ever built from ASCII uppercase letters.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Currency::new(&s).map_err(serde::de::Error::custom)
    }
}

/// An amount of money in minor units (yen, cents) of one currency.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Amount {
    /// Minor units; never negative on the wire.
    pub minor: u64,
    /// The currency.
    pub currency: Currency,
}

impl Amount {
    /// An amount of `minor` units of `currency`.
    pub const fn new(minor: u64, currency: Currency) -> Self {
        Amount { minor, currency }
    }

    /// Zero in `currency`.
    pub const fn zero(currency: Currency) -> Self {
        Amount { minor: 0, currency }
    }

    /// `self + other`, or `None` on a currency mismatch or overflow.
    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        (self.currency == other.currency)
            .then(|| self.minor.checked_add(other.minor))
            .flatten()
            .map(|minor| Amount::new(minor, self.currency))
    }

    /// `self - other`, or `None` on a currency mismatch or if the result would be negative.
    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        (self.currency == other.currency)
            .then(|| self.minor.checked_sub(other.minor))
            .flatten()
            .map(|minor| Amount::new(minor, self.currency))
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.minor, self.currency)
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_codes_are_validated() {
        assert_eq!(Currency::new("JPY").unwrap(), Currency::JPY);
        for bad in ["jpy", "JP", "JPYY", "J1Y", ""] {
            assert!(Currency::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(serde_json::from_str::<Currency>("\"usd\"").is_err());
    }

    #[test]
    fn arithmetic_refuses_mixed_currencies_and_negative_results() {
        let a = Amount::new(5, Currency::JPY);
        let e = Amount::new(5, Currency::EUR);
        assert_eq!(a.checked_add(a), Some(Amount::new(10, Currency::JPY)));
        assert_eq!(a.checked_add(e), None);
        assert_eq!(a.checked_sub(Amount::new(6, Currency::JPY)), None);
        assert_eq!(Amount::new(u64::MAX, Currency::JPY).checked_add(a), None);
        assert!(serde_json::from_str::<Amount>(r#"{"minor":-1,"currency":"JPY"}"#).is_err());
    }
}
