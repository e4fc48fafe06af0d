//! Wedding-day priority: an event whose wedding is today (in the couple's
//! time zone) or within `within` of now goes to the high lane whatever its
//! type. The date is read from the event's body (a JSON pointer) as
//! `YYYY-MM-DD` (the whole day in the zone) or an RFC 3339 instant.

use std::time::Duration;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// `priority.wedding_day`, ready to match.
#[derive(Debug, Clone)]
pub struct WeddingDayRule {
    pub zone: TimeZone,
    pub within: Duration,
}

impl WeddingDayRule {
    /// Whether the wedding `value` names is today in the rule's zone, or
    /// within `within` of `now` (before or after). A value that is no date
    /// never matches: a malformed field must not jump the queue.
    pub fn matches(&self, value: &str, now: Timestamp) -> bool {
        let value = value.trim();
        let Some(when) = self.when(value) else {
            return false;
        };
        let within =
            jiff::SignedDuration::try_from(self.within).unwrap_or(jiff::SignedDuration::MAX);
        let (Ok(from), Ok(to)) = (now.checked_sub(within), now.checked_add(within)) else {
            return false;
        };
        // Only a plain `YYYY-MM-DD` names a day that can be "today".
        let on_today = when
            .day
            .filter(|_| value.len() == 10)
            .is_some_and(|date| date == now.to_zoned(self.zone.clone()).date());
        on_today || (when.start <= to && when.end >= from)
    }

    /// What the value names: one RFC 3339 instant, or a date's whole day
    /// in the zone.
    fn when(&self, value: &str) -> Option<When> {
        if value.len() > 64 {
            return None;
        }
        if let Ok(instant) = value.parse::<Timestamp>() {
            return Some(When {
                day: None,
                start: instant,
                end: instant,
            });
        }
        let date: Date = value.parse().ok()?;
        let start = date.to_zoned(self.zone.clone()).ok()?;
        let end = date.tomorrow().ok()?.to_zoned(self.zone.clone()).ok()?;
        Some(When {
            day: Some(date),
            start: start.timestamp(),
            end: end.timestamp(),
        })
    }
}

/// The instants a wedding value covers, and its day when it names one.
struct When {
    day: Option<Date>,
    start: Timestamp,
    end: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(zone: &str, within_hours: u64) -> WeddingDayRule {
        WeddingDayRule {
            zone: TimeZone::get(zone).unwrap(),
            within: Duration::from_secs(within_hours * 3600),
        }
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn a_date_is_today_in_the_couples_zone() {
        // 23:30 in London on the 6th is already the 7th in Sydney.
        let now = at("2026-06-06T22:30:00Z");
        let sydney = rule("Australia/Sydney", 0);
        assert!(sydney.matches("2026-06-07", now));
        assert!(!sydney.matches("2026-06-06", now));
        let london = rule("Europe/London", 0);
        assert!(london.matches("2026-06-06", now));
        assert!(!london.matches("2026-06-07", now));
    }

    #[test]
    fn within_reaches_the_days_around_the_wedding() {
        let now = at("2026-06-06T12:00:00Z");
        let utc = rule("UTC", 24);
        assert!(utc.matches("2026-06-07", now), "tomorrow starts in 12 h");
        assert!(utc.matches("2026-06-05", now), "yesterday ended 12 h ago");
        assert!(!utc.matches("2026-06-09", now));
        assert!(utc.matches("2026-06-07T09:00:00+02:00", now));
        assert!(!utc.matches("2026-06-08T13:00:00Z", now));
    }

    #[test]
    fn what_is_no_date_never_matches() {
        let now = at("2026-06-06T12:00:00Z");
        let utc = rule("UTC", 24);
        for value in [
            "",
            "tomorrow",
            "2026-13-01",
            "06/06/2026",
            "2026-06-06junk",
            &"9".repeat(100),
        ] {
            assert!(!utc.matches(value, now), "{value:?}");
        }
    }
}
