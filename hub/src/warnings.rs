//! Fraud warnings: the texts (a data file) and which ones a situation calls for.
//!
//! The texts live in `hub/data/warnings.toml`, compiled in as the default and replaceable by
//! `[warnings] file`. Selection is pure: [`Situation`] in, [`FraudWarning`]s out, in a fixed
//! order with the general warning first.

use std::collections::BTreeMap;
use std::path::Path;

use qrcash_protocol::messages::FraudWarning;
use serde::Deserialize;

/// The built-in warnings file.
pub const DEFAULT_WARNINGS_TOML: &str = include_str!("../data/warnings.toml");

/// Stable warning codes, in the order they are shown.
pub const CODES: [&str; 5] = [
    GENERAL,
    FIRST_USE_OF_ATM,
    LARGE_AMOUNT,
    LATE_HOURS,
    ACCOUNT_RECENTLY_CHANGED,
];
/// Always shown: nobody legitimate asks you to operate an ATM.
pub const GENERAL: &str = "general";
/// The account never took cash at this ATM.
pub const FIRST_USE_OF_ATM: &str = "first_use_of_atm";
/// The amount is at or above the large-amount threshold.
pub const LARGE_AMOUNT: &str = "large_amount";
/// Local time is inside the late-hours window.
pub const LATE_HOURS: &str = "late_hours";
/// A new device or password change happened recently.
pub const ACCOUNT_RECENTLY_CHANGED: &str = "account_recently_changed";

/// The warnings file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WarningsError {
    /// Reading it failed.
    #[error("warnings file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Not valid TOML of the expected shape.
    #[error("warnings file is invalid: {0}")]
    Parse(String),
    /// A required warning or language is missing.
    #[error(
        "warnings file lacks {0}: every code in {CODES:?} needs a text in every configured language"
    )]
    Missing(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    warning: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    code: String,
    #[serde(flatten)]
    texts: BTreeMap<String, String>,
}

/// Which situations apply to a presented withdrawal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Situation {
    /// First withdrawal of this account at this ATM.
    pub first_use_of_atm: bool,
    /// At or above the large-amount threshold.
    pub large_amount: bool,
    /// Inside the late-hours window.
    pub late_hours: bool,
    /// New device or password change recently.
    pub account_recently_changed: bool,
}

/// The loaded texts: code → language → text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarningCatalog {
    texts: BTreeMap<String, BTreeMap<String, String>>,
    languages: Vec<String>,
}

impl WarningCatalog {
    /// Parses a warnings file and checks that every code has every language in `languages`.
    pub fn parse(text: &str, languages: &[String]) -> Result<Self, WarningsError> {
        let file: File = toml::from_str(text).map_err(|e| WarningsError::Parse(e.to_string()))?;
        let mut texts = BTreeMap::new();
        for e in file.warning {
            texts.insert(e.code, e.texts);
        }
        for code in CODES {
            let t = texts
                .get(code)
                .ok_or_else(|| WarningsError::Missing(format!("warning {code:?}")))?;
            for lang in languages {
                if t.get(lang).is_none_or(|s| s.trim().is_empty()) {
                    return Err(WarningsError::Missing(format!(
                        "the {lang:?} text of warning {code:?}"
                    )));
                }
            }
        }
        Ok(WarningCatalog {
            texts,
            languages: languages.to_vec(),
        })
    }

    /// The built-in catalogue, or the file at `path`.
    pub fn load(path: Option<&Path>, languages: &[String]) -> Result<Self, WarningsError> {
        match path {
            None => Self::parse(DEFAULT_WARNINGS_TOML, languages),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| WarningsError::Io {
                    path: p.display().to_string(),
                    source,
                })?;
                Self::parse(&text, languages)
            }
        }
    }

    /// The warnings for `situation`, each in every configured language.
    pub fn select(&self, situation: &Situation) -> Vec<FraudWarning> {
        let wanted = [
            (GENERAL, true),
            (FIRST_USE_OF_ATM, situation.first_use_of_atm),
            (LARGE_AMOUNT, situation.large_amount),
            (LATE_HOURS, situation.late_hours),
            (ACCOUNT_RECENTLY_CHANGED, situation.account_recently_changed),
        ];
        let mut out = Vec::new();
        for (code, on) in wanted {
            if !on {
                continue;
            }
            for lang in &self.languages {
                if let Some(text) = self.texts.get(code).and_then(|t| t.get(lang)) {
                    out.push(FraudWarning {
                        code: code.to_owned(),
                        lang: lang.clone(),
                        text: text.clone(),
                    });
                }
            }
        }
        out
    }
}

/// The local hour (0–23) at Unix time `now` with a UTC offset in minutes.
pub fn local_hour(now: u64, utc_offset_minutes: i32) -> u8 {
    let local = now as i64 + i64::from(utc_offset_minutes) * 60;
    (local.rem_euclid(86_400) / 3600) as u8
}

/// Start of the local day containing `now`, as Unix time.
pub fn local_day_start(now: u64, utc_offset_minutes: i32) -> u64 {
    let offset = i64::from(utc_offset_minutes) * 60;
    let local = now as i64 + offset;
    (local - local.rem_euclid(86_400) - offset).max(0) as u64
}

/// Whether `hour` lies in `[start, end)`, wrapping past midnight when `start > end`.
pub fn in_hour_window(hour: u8, start: u8, end: u8) -> bool {
    match start.cmp(&end) {
        std::cmp::Ordering::Less => hour >= start && hour < end,
        std::cmp::Ordering::Greater => hour >= start || hour < end,
        std::cmp::Ordering::Equal => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn langs() -> Vec<String> {
        vec!["ja".into(), "en".into()]
    }

    #[test]
    fn built_in_file_has_every_code_in_japanese_and_english() {
        let c = WarningCatalog::parse(DEFAULT_WARNINGS_TOML, &langs()).unwrap();
        let all = c.select(&Situation {
            first_use_of_atm: true,
            large_amount: true,
            late_hours: true,
            account_recently_changed: true,
        });
        assert_eq!(all.len(), 10);
        assert!(all.iter().any(|w| w.lang == "ja" && w.code == GENERAL));
        let general_ja = &all[0].text;
        assert!(general_ja.contains("ATM"), "{general_ja}");
    }

    #[test]
    fn the_general_warning_is_always_there_and_situations_add_theirs() {
        let c = WarningCatalog::parse(DEFAULT_WARNINGS_TOML, &["en".to_string()]).unwrap();
        let plain = c.select(&Situation::default());
        assert_eq!(
            plain.iter().map(|w| w.code.as_str()).collect::<Vec<_>>(),
            [GENERAL]
        );
        let large = c.select(&Situation {
            large_amount: true,
            ..Situation::default()
        });
        assert_eq!(
            large.iter().map(|w| w.code.as_str()).collect::<Vec<_>>(),
            [GENERAL, LARGE_AMOUNT]
        );
    }

    #[test]
    fn incomplete_files_are_refused() {
        let text = "[[warning]]\ncode = \"general\"\nen = \"x\"\n";
        assert!(matches!(
            WarningCatalog::parse(text, &["en".to_string()]),
            Err(WarningsError::Missing(_))
        ));
        assert!(matches!(
            WarningCatalog::parse(DEFAULT_WARNINGS_TOML, &["fr".to_string()]),
            Err(WarningsError::Missing(_))
        ));
        assert!(matches!(
            WarningCatalog::parse("nonsense", &langs()),
            Err(WarningsError::Parse(_))
        ));
    }

    #[test]
    fn local_time_and_windows() {
        // 2027-01-15 12:00 UTC is 21:00 in Japan.
        let t = 1_800_014_400 - (1_800_014_400 % 86_400) + 12 * 3600;
        assert_eq!(local_hour(t, 0), 12);
        assert_eq!(local_hour(t, 540), 21);
        assert_eq!(local_hour(t, -300), 7);
        assert!(in_hour_window(21, 21, 6));
        assert!(in_hour_window(2, 21, 6));
        assert!(!in_hour_window(6, 21, 6));
        assert!(!in_hour_window(12, 21, 6));
        assert!(in_hour_window(10, 9, 17));
        assert!(!in_hour_window(17, 9, 17));
        let start = local_day_start(t, 540);
        assert_eq!(local_hour(start, 540), 0);
        assert!(start <= t && t - start < 86_400);
    }
}
