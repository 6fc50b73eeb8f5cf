//! qrcash's benchmarks and long campaigns, one binary each in `src/bin/` and a script each
//! in `scripts/` (`bench-hub.sh`, `bench-agent.sh`, `bench-login.sh`). Not part of the default test run: they take minutes
//! and their figures depend on the machine, so each writes its results, with the machine,
//! the load and the command, into its own section of `docs/BENCHMARKS.md` ([`report`]).

pub mod report;

/// A clap value parser for a count of at least `MIN`.
pub fn at_least<const MIN: usize>(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= MIN => Ok(n),
        _ => Err(format!("must be a whole number of at least {MIN}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_below_the_minimum_are_refused() {
        assert_eq!(super::at_least::<10>("10"), Ok(10));
        assert!(super::at_least::<10>("9").is_err());
        assert!(super::at_least::<1>("-1").is_err());
        assert!(super::at_least::<1>("x").is_err());
    }
}
