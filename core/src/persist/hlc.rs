//! A hybrid logical clock (Kulkarni et al.): timestamps that follow physical time when clocks
//! behave, never go backwards when they do not, and order causally related events.
//!
//! A timestamp is one `u64`: the upper 52 bits are physical time in microseconds since the Unix
//! epoch (enough until the year 2112), the lower 12 a logical counter that breaks ties (4,096
//! per microsecond; beyond that the clock borrows the next microsecond). The clock is pure: the caller passes the physical time it
//! read (PROTOCOLS §4: versions carry a timestamp that never goes backwards, even when the
//! machine's clock jumps back).

/// Bits of the logical counter.
const LOGICAL_BITS: u32 = 12;
const LOGICAL_MAX: u64 = (1 << LOGICAL_BITS) - 1;

/// A timestamp: physical microseconds and a logical counter, ordered as one `u64`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct Hlc(pub u64);

impl Hlc {
    /// Bits of the logical part.
    pub const LOGICAL_BITS: u32 = LOGICAL_BITS;

    /// The physical part, in microseconds.
    pub fn micros(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// The logical part.
    pub fn logical(self) -> u64 {
        self.0 & LOGICAL_MAX
    }

    fn new(micros: u64, logical: u64) -> Self {
        Self((micros << LOGICAL_BITS) | logical)
    }
}

/// As RFC 3339 in UTC with microseconds (`2026-12-06T21:28:12.123456Z`), and the logical
/// counter after a `+` when it is not zero (`...Z+3`).
impl std::fmt::Display for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let micros = self.micros();
        let secs = micros / 1_000_000;
        let (days, of_day) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
            of_day / 3_600,
            of_day / 60 % 60,
            of_day % 60,
            micros % 1_000_000
        )?;
        if self.logical() != 0 {
            write!(f, "+{}", self.logical())?;
        }
        Ok(())
    }
}

/// The proleptic Gregorian date of `days` after 1970-01-01 (the days-to-civil conversion
/// of the 400-year cycle: 146,097 days, eras starting on March 1st).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// One member's clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    /// A clock that has issued nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A timestamp for a local event at physical time `now_micros`: later than every timestamp
    /// this clock issued or received.
    pub fn tick(&mut self, now_micros: u64) -> Hlc {
        self.advance(now_micros, Hlc(0))
    }

    /// A timestamp for an event that follows `seen` (a timestamp received from another member):
    /// later than `seen` and than everything this clock issued.
    pub fn observe(&mut self, now_micros: u64, seen: Hlc) -> Hlc {
        self.advance(now_micros, seen)
    }

    fn advance(&mut self, now_micros: u64, seen: Hlc) -> Hlc {
        let now = now_micros.min(u64::MAX >> LOGICAL_BITS);
        let floor = self.last.max(seen);
        let next = if now > floor.micros() {
            Hlc::new(now, 0)
        } else if floor.logical() < LOGICAL_MAX {
            Hlc::new(floor.micros(), floor.logical() + 1)
        } else {
            // The counter is exhausted within one microsecond: borrow the next microsecond.
            Hlc::new(floor.micros() + 1, 0)
        };
        self.last = next;
        next
    }

    /// The last timestamp issued.
    pub fn last(&self) -> Hlc {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_rfc_3339() {
        assert_eq!(Hlc::new(0, 0).to_string(), "1970-01-01T00:00:00.000000Z");
        // 2026-12-06T21:28:12.123456Z is 1796592492 seconds after the epoch.
        assert_eq!(Hlc::new(1_796_592_492_123_456, 0).to_string(), "2026-12-06T21:28:12.123456Z");
        assert_eq!(Hlc::new(951_782_400_000_001, 3).to_string(), "2000-02-29T00:00:00.000001Z+3");
        assert_eq!(Hlc::new(4_107_542_399_999_999, 0).to_string(), "2100-02-28T23:59:59.999999Z");
    }

    #[test]
    fn todays_clock_fits() {
        // Microseconds since the epoch in 2026 and in 2100 are kept whole, not clamped.
        for now in [1_795_000_000_000_000u64, 4_102_444_800_000_000] {
            let mut c = HlcClock::new();
            assert_eq!(c.tick(now).micros(), now);
            assert_eq!(c.tick(now).logical(), 1);
        }
    }

    #[test]
    fn follows_time_and_never_goes_back() {
        let mut c = HlcClock::new();
        let a = c.tick(100);
        assert_eq!((a.micros(), a.logical()), (100, 0));
        let b = c.tick(100);
        assert_eq!((b.micros(), b.logical()), (100, 1));
        // The machine's clock jumps back: timestamps still increase.
        let d = c.tick(50);
        assert!(d > b);
        assert_eq!(d.micros(), 100);
        let e = c.tick(200);
        assert_eq!((e.micros(), e.logical()), (200, 0));
    }

    #[test]
    fn received_timestamps_are_passed() {
        let mut c = HlcClock::new();
        c.tick(10);
        let seen = Hlc::new(500, 7);
        let t = c.observe(20, seen);
        assert!(t > seen);
        assert_eq!((t.micros(), t.logical()), (500, 8));
        assert!(c.tick(30) > t);
    }

    #[test]
    fn an_exhausted_counter_borrows_the_next_microsecond() {
        let mut c = HlcClock::new();
        let mut last = c.tick(1);
        for _ in 0..(LOGICAL_MAX + 5) {
            let t = c.tick(1);
            assert!(t > last);
            last = t;
        }
        assert_eq!(last.micros(), 2);
    }

    #[test]
    fn seeded_random_clocks_stay_monotonic() {
        let mut x: u64 = 0x1234_5678;
        let mut c = HlcClock::new();
        let mut last = Hlc(0);
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let now = x % 1_000;
            let t = if x.is_multiple_of(3) { c.observe(now, Hlc(x % (1 << 30))) } else { c.tick(now) };
            assert!(t > last);
            last = t;
        }
    }
}
