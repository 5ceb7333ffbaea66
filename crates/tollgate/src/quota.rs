//! Quotas: how much may pass per period, and how much may pass at once.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use crate::error::Error;

/// `amount` per `period`, with a `burst` capacity.
///
/// The replenish rate is `amount / period`; `burst` is how much may pass at once after a quiet
/// spell (the bucket's capacity for GCRA; window algorithms count `amount` per window and ignore
/// it). The amount may be requests, messages or bytes: the unit is the caller's.
///
/// ```
/// use std::num::NonZeroU32;
/// use tollgate::Quota;
///
/// let q: Quota = "20/s burst 40".parse()?;
/// assert_eq!(q.amount().get(), 20);
/// assert_eq!(q.burst().get(), 40);
/// assert_eq!(Quota::per_minute(NonZeroU32::new(5).unwrap()), "5/min".parse()?);
/// assert!("1MiB/min".parse::<Quota>()?.amount().get() == 1 << 20);
/// # Ok::<(), tollgate::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    amount: NonZeroU32,
    period: Duration,
    burst: NonZeroU32,
    /// `period / amount` in nanoseconds, rounded up: computed once, as every check needs it
    /// and a division costs more than the rest of a check's arithmetic.
    interval: u64,
}

/// Nanoseconds to replenish one unit of `amount` per `period`, rounded up.
const fn interval(amount: NonZeroU32, period: Duration) -> u64 {
    (period.as_nanos() as u64).div_ceil(amount.get() as u64)
}

impl Quota {
    /// `amount` per second, burst `amount`.
    pub const fn per_second(amount: NonZeroU32) -> Self {
        let period = Duration::from_secs(1);
        Self { amount, period, burst: amount, interval: interval(amount, period) }
    }

    /// `amount` per minute, burst `amount`.
    pub const fn per_minute(amount: NonZeroU32) -> Self {
        let period = Duration::from_secs(60);
        Self { amount, period, burst: amount, interval: interval(amount, period) }
    }

    /// `amount` per hour, burst `amount`.
    pub const fn per_hour(amount: NonZeroU32) -> Self {
        let period = Duration::from_secs(3600);
        Self { amount, period, burst: amount, interval: interval(amount, period) }
    }

    /// `amount` per `period`, burst `amount`; `None` when the period is zero or so short that one
    /// unit would be replenished in under a nanosecond.
    pub const fn new(amount: NonZeroU32, period: Duration) -> Option<Self> {
        let nanos = period.as_nanos();
        if nanos == 0 || nanos < amount.get() as u128 || nanos > u64::MAX as u128 / 4 {
            return None;
        }
        Some(Self { amount, period, burst: amount, interval: interval(amount, period) })
    }

    /// The same rate with another burst capacity.
    #[must_use]
    pub const fn with_burst(self, burst: NonZeroU32) -> Self {
        Self { burst, ..self }
    }

    /// How much is replenished per period.
    pub const fn amount(&self) -> NonZeroU32 {
        self.amount
    }

    /// The period.
    pub const fn period(&self) -> Duration {
        self.period
    }

    /// The burst capacity.
    pub const fn burst(&self) -> NonZeroU32 {
        self.burst
    }

    /// Nanoseconds to replenish one unit, rounded up so that rounding never admits more than the
    /// quota allows.
    pub const fn emission_interval_nanos(&self) -> u64 {
        self.interval
    }

    /// The period in nanoseconds.
    pub const fn period_nanos(&self) -> u64 {
        self.period.as_nanos() as u64
    }
}

impl fmt::Display for Quota {
    /// Renders in the text form [`FromStr`] reads, e.g. `20/1s burst 40`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.amount, DisplayDuration(self.period))?;
        if self.burst != self.amount {
            write!(f, " burst {}", self.burst)?;
        }
        Ok(())
    }
}

/// A duration written the way [`parse_duration`] reads it (`1500ms`, `10s`, `2min`).
#[derive(Debug)]
pub(crate) struct DisplayDuration(pub(crate) Duration);

impl fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            let s = d.as_secs();
            if s.is_multiple_of(3600) {
                write!(f, "{}h", s / 3600)
            } else if s.is_multiple_of(60) {
                write!(f, "{}min", s / 60)
            } else {
                write!(f, "{s}s")
            }
        } else if d.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}ns", d.as_nanos())
        }
    }
}

const QUOTA_EXPECTED: &str = "`<amount>/<period>` with an optional ` burst <n>`, e.g. `100/10s`, \
     `5/min`, `20/s burst 40`, `1MiB/min`; periods: ns, us, ms, s, min, h, d";

impl FromStr for Quota {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::ParseQuota {
            text: text.to_owned(),
            reason: reason.to_owned(),
            expected: QUOTA_EXPECTED,
        };
        let trimmed = text.trim();
        let (rate, burst) = match trimmed.split_once("burst") {
            Some((rate, burst)) => (rate.trim(), Some(burst.trim())),
            None => (trimmed, None),
        };
        let (amount, period) = rate.split_once('/').ok_or_else(|| bad("no `/` between amount and period"))?;
        let amount = parse_amount(amount.trim()).map_err(|r| bad(&r))?;
        let amount = u32::try_from(amount)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| bad("the amount must be between 1 and 4294967295"))?;
        let period = parse_period(period.trim()).map_err(|r| bad(&r))?;
        let mut quota = Quota::new(amount, period).ok_or_else(|| {
            bad("the period must be longer than a nanosecond per unit and shorter than about 146 years")
        })?;
        if let Some(burst) = burst {
            let burst = parse_amount(burst).map_err(|r| bad(&r))?;
            let burst = u32::try_from(burst)
                .ok()
                .and_then(NonZeroU32::new)
                .ok_or_else(|| bad("the burst must be between 1 and 4294967295"))?;
            quota = quota.with_burst(burst);
            let bucket = quota.emission_interval_nanos().checked_mul(u64::from(burst.get()));
            if bucket.is_none_or(|b| b > crate::algorithm::gcra::MAX_BUCKET_NANOS) {
                return Err(bad("the burst must refill in under about 146 years (period / amount × burst)"));
            }
        }
        Ok(quota)
    }
}

impl serde::Serialize for Quota {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Quota {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses an amount: a whole number with an optional byte unit (`B`, `KB`, `KiB`, `MB`, `MiB`,
/// `GB`, `GiB`), e.g. `100`, `64KiB`, `1MiB`.
pub fn parse_amount(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '_').unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let digits: String = digits.chars().filter(|c| *c != '_').collect();
    if digits.is_empty() {
        return Err(format!("`{text}` does not start with a whole number"));
    }
    let n: u64 = digits.parse().map_err(|_| format!("`{digits}` is too large"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "KB" | "kB" | "kb" => 1_000,
        "KiB" | "kib" => 1 << 10,
        "MB" | "mb" => 1_000_000,
        "MiB" | "mib" => 1 << 20,
        "GB" | "gb" => 1_000_000_000,
        "GiB" | "gib" => 1 << 30,
        other => return Err(format!("unknown unit `{other}` (expected B, KB, KiB, MB, MiB, GB or GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses a period: an optional whole number followed by a unit, e.g. `s`, `10s`, `min`, `1500ms`.
fn parse_period(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = if digits.is_empty() { 1 } else { digits.parse().map_err(|_| format!("`{digits}` is too large"))? };
    duration_from(n, unit.trim()).ok_or_else(|| format!("unknown or overflowing period `{text}`"))
}

fn duration_from(n: u64, unit: &str) -> Option<Duration> {
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs);
    match unit {
        "ns" => Some(Duration::from_nanos(n)),
        "us" | "µs" => Some(Duration::from_micros(n)),
        "ms" => Some(Duration::from_millis(n)),
        "s" | "sec" | "second" | "seconds" => secs(1),
        "m" | "min" | "minute" | "minutes" => secs(60),
        "h" | "hour" | "hours" => secs(3600),
        "d" | "day" | "days" => secs(86_400),
        _ => None,
    }
}

/// Parses a duration such as `30s`, `1500ms`, `2min`, `1h` (a number is required).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("`{text}` is not a duration (expected e.g. `30s`, `1500ms`, `2min`)"));
    }
    let n: u64 = digits.parse().map_err(|_| format!("`{digits}` is too large"))?;
    duration_from(n, unit.trim())
        .ok_or_else(|| format!("`{text}` has an unknown unit (expected ns, us, ms, s, min, h or d)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quota {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(q("100/10s").period(), Duration::from_secs(10));
        assert_eq!(q("100/10s").amount().get(), 100);
        assert_eq!(q("5/min").period(), Duration::from_secs(60));
        assert_eq!(q("20/s burst 40").burst().get(), 40);
        assert_eq!(q("1MiB/min").amount().get(), 1 << 20);
        assert_eq!(q("  3 / 1500ms ").period(), Duration::from_millis(1500));
        assert_eq!(q("5/min burst 10").to_string(), "5/1min burst 10");
        assert_eq!(q(&q("7/90s burst 9").to_string()), q("7/90s burst 9"));
    }

    #[test]
    fn rejects_bad_text_quoting_it() {
        for bad in [
            "",
            "100",
            "0/s",
            "10/0s",
            "x/s",
            "10/fortnight",
            "5/s burst 0",
            "5GiB/s",
            "99999999999/s",
            "10/1ns",
            "1KiB/d burst 1GiB",
            "1/36500d burst 2",
        ] {
            let err = bad.parse::<Quota>().expect_err(bad).to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
            assert!(err.contains("expected"), "{err}");
        }
    }

    #[test]
    fn emission_interval_rounds_up() {
        assert_eq!(q("3/s").emission_interval_nanos(), 333_333_334);
        assert_eq!(q("1/s").emission_interval_nanos(), 1_000_000_000);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
