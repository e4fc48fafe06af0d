//! Parsers for the human units the configuration accepts: durations (`250ms`,
//! `1h30m`), byte sizes (`1MiB`) and percentages (`50%`). Each error says
//! what was expected, never a bare "invalid".

use std::time::Duration;

use super::error::ValueError;

/// `250ms`, `30s`, `5m`, `1h`, `1d`, or several of them in a row (`1h30m`).
pub fn parse_duration(text: &str) -> Result<Duration, ValueError> {
    let text = text.trim();
    let expected = || ValueError::Duration(text.to_string());
    if text.is_empty() {
        return Err(expected());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(expected());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| expected())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(expected()),
        };
        let millis = number.checked_mul(millis_per_unit).ok_or_else(expected)?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(expected)?;
    }
    Ok(total)
}

/// Renders a duration the way the configuration writes it (`1m30s`, `250ms`).
pub fn format_duration(duration: Duration) -> String {
    let mut millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if millis >= size {
            out.push_str(&format!("{}{unit}", millis / size));
            millis %= size;
        }
    }
    out
}

/// `1MiB`, `512KiB`, `2MB`, `1048576` (bytes).
pub fn parse_size(text: &str) -> Result<u64, ValueError> {
    let text = text.trim();
    let expected = || ValueError::Size(text.to_string());
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(expected());
    }
    let number: u64 = text[..digits].parse().map_err(|_| expected())?;
    let multiplier: u64 = match text[digits..].trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => return Err(expected()),
    };
    number.checked_mul(multiplier).ok_or_else(expected)
}

/// `50%` or `12.5%`, as a fraction in 0..=1.
pub fn parse_percent(text: &str) -> Result<f64, ValueError> {
    let text = text.trim();
    let expected = || ValueError::Percent(text.to_string());
    let number = text.strip_suffix('%').ok_or_else(expected)?;
    let value: f64 = number.trim().parse().map_err(|_| expected())?;
    if !(0.0..=100.0).contains(&value) {
        return Err(expected());
    }
    Ok(value / 100.0)
}

/// `0.25` or `25%`.
pub fn parse_ratio(text: &str) -> Result<f64, ValueError> {
    if text.trim().ends_with('%') {
        return parse_percent(text);
    }
    match text.trim().parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(ValueError::Percent(text.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ratio_is_a_fraction_or_a_percentage() {
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert_eq!(parse_ratio("25%"), Ok(0.25));
        assert_eq!(parse_ratio("1"), Ok(1.0));
        assert!(parse_ratio("1.5").is_err());
        assert!(parse_ratio("-0.1").is_err());
        assert!(parse_ratio("often").is_err());
    }

    #[test]
    fn parses_every_duration_unit_and_compounds() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("3d"), Ok(Duration::from_secs(3 * 86400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_durations_without_a_known_unit() {
        for bad in [
            "",
            "30",
            "s",
            "1 minute",
            "5x",
            "-1s",
            "1.5s",
            "99999999999999999999d",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(matches!(err, ValueError::Duration(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn formats_durations_back_to_config_syntax() {
        assert_eq!(format_duration(Duration::from_millis(90_250)), "1m30s250ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_secs(72 * 3600)), "3d");
    }

    #[test]
    fn parses_binary_and_decimal_sizes() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("1 megabyte").is_err());
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn parses_percentages_as_fractions() {
        assert_eq!(parse_percent("50%"), Ok(0.5));
        assert_eq!(parse_percent("12.5%"), Ok(0.125));
        assert!(parse_percent("50").is_err());
        assert!(parse_percent("150%").is_err());
    }
}
