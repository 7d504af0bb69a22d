//! Kubernetes-style resource quantities: CPU in millicores, memory in bytes.

use super::error::ValueError;

/// Parses a CPU quantity into millicores: `"500m"` → 500, `"0.5"` → 500, `"2"` → 2000.
///
/// Fractions finer than one millicore are refused rather than rounded.
pub fn parse_cpu(text: &str) -> Result<u64, ValueError> {
    let fail = |why: &str| ValueError(format!("invalid cpu quantity \"{text}\": {why}"));
    let trimmed = text.trim();
    let (number, millis_per_unit) = match trimmed.strip_suffix('m') {
        Some(number) => (number, 1),
        None => (trimmed, 1000),
    };
    let decimal = Decimal::parse(number).map_err(|why| fail(&why))?;
    let scaled = decimal
        .mantissa
        .checked_mul(millis_per_unit)
        .ok_or_else(|| fail("too large"))?;
    let divisor = pow10(decimal.scale).ok_or_else(|| fail("too many decimal places"))?;
    if scaled % divisor != 0 {
        return Err(fail("finer than 1m (one thousandth of a core)"));
    }
    u64::try_from(scaled / divisor).map_err(|_| fail("too large"))
}

/// Parses a memory quantity into bytes: `"128Mi"`, `"1Gi"`, `"512M"`, `"1G"`, `"1000"`,
/// `"1.5Gi"`, `"1e9"`. Binary suffixes Ki..Ei, decimal suffixes k..E; a fractional byte
/// count is rounded up, as Kubernetes does.
pub fn parse_memory(text: &str) -> Result<u64, ValueError> {
    let fail = |why: &str| ValueError(format!("invalid memory quantity \"{text}\": {why}"));
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(split);
    let decimal = Decimal::parse(number).map_err(|why| fail(&why))?;
    let multiplier = memory_multiplier(suffix).map_err(|why| fail(&why))?;
    let divisor = pow10(decimal.scale).ok_or_else(|| fail("too many decimal places"))?;
    let scaled = decimal
        .mantissa
        .checked_mul(multiplier)
        .ok_or_else(|| fail("too large"))?;
    u64::try_from(scaled.div_ceil(divisor)).map_err(|_| fail("too large"))
}

fn memory_multiplier(suffix: &str) -> Result<u128, String> {
    let binary = |power: u32| Ok(1u128 << (10 * power));
    let decimal = |power: u32| Ok(10u128.pow(3 * power));
    match suffix {
        "" => Ok(1),
        "Ki" => binary(1),
        "Mi" => binary(2),
        "Gi" => binary(3),
        "Ti" => binary(4),
        "Pi" => binary(5),
        "Ei" => binary(6),
        "k" => decimal(1),
        "M" => decimal(2),
        "G" => decimal(3),
        "T" => decimal(4),
        "P" => decimal(5),
        "E" => decimal(6),
        "m" => Err("suffix m means thousandths of a byte; write Mi (mebibytes) or M".into()),
        exponent if exponent.starts_with(['e', 'E']) => {
            let digits = &exponent[1..];
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("invalid exponent \"{exponent}\""));
            }
            digits
                .parse::<u32>()
                .ok()
                .and_then(pow10)
                .ok_or_else(|| format!("exponent \"{exponent}\" is too large"))
        }
        other => Err(format!(
            "unknown suffix \"{other}\" (use Ki, Mi, Gi, Ti, Pi, Ei or k, M, G, T, P, E)"
        )),
    }
}

fn pow10(exponent: u32) -> Option<u128> {
    10u128.checked_pow(exponent)
}

/// A non-negative decimal number held exactly: `mantissa / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decimal {
    mantissa: u128,
    scale: u32,
}

impl Decimal {
    fn parse(text: &str) -> Result<Decimal, String> {
        if text.starts_with('-') {
            return Err("must not be negative".into());
        }
        let unsigned = text.strip_prefix('+').unwrap_or(text);
        let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        if whole.is_empty() && fraction.is_empty() {
            return Err("expected a number".into());
        }
        if !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
        {
            return Err("expected a number".into());
        }
        let fraction = fraction.trim_end_matches('0');
        let mut mantissa: u128 = 0;
        for digit in whole.bytes().chain(fraction.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(u128::from(digit - b'0')))
                .ok_or("too large")?;
        }
        let scale = u32::try_from(fraction.len()).map_err(|_| "too many decimal places")?;
        Ok(Decimal { mantissa, scale })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::format_cpu;
    use proptest::prelude::*;

    #[test]
    fn cpu_table() {
        let table: &[(&str, u64)] = &[
            ("500m", 500),
            ("0.5", 500),
            ("1", 1000),
            ("2", 2000),
            ("1.5", 1500),
            ("0.001", 1),
            ("1000m", 1000),
            ("0", 0),
            ("+1", 1000),
            (".25", 250),
            ("2.0", 2000),
            (" 250m ", 250),
        ];
        for (text, millis) in table {
            assert_eq!(parse_cpu(text), Ok(*millis), "cpu {text}");
        }
    }

    #[test]
    fn cpu_refusals() {
        for text in [
            "", "m", "-1", "0.0005", "1.5m", "abc", "1Gi", "1 core", "1..5",
        ] {
            let err = parse_cpu(text).expect_err(text);
            assert!(err.0.contains(&format!("\"{text}\"")), "{err}");
        }
        assert!(
            parse_cpu("0.0005")
                .expect_err("fine")
                .0
                .contains("finer than 1m")
        );
        assert!(
            parse_cpu("-1")
                .expect_err("negative")
                .0
                .contains("negative")
        );
    }

    #[test]
    fn memory_table() {
        let table: &[(&str, u64)] = &[
            ("128Mi", 128 << 20),
            ("1Gi", 1 << 30),
            ("512M", 512_000_000),
            ("1G", 1_000_000_000),
            ("1000", 1000),
            ("1.5Gi", 1536 << 20),
            ("1k", 1000),
            ("1Ki", 1024),
            ("2Ti", 2 << 40),
            ("1e9", 1_000_000_000),
            ("1E3", 1000),
            ("1E", 1_000_000_000_000_000_000),
            ("0.5Ki", 512),
            ("0.1Ki", 103),
            ("1000000000.0", 1_000_000_000),
            ("0", 0),
        ];
        for (text, bytes) in table {
            assert_eq!(parse_memory(text), Ok(*bytes), "memory {text}");
        }
    }

    #[test]
    fn memory_refusals() {
        for (text, why) in [
            ("128m", "Mi"),
            ("1MB", "unknown suffix \"MB\""),
            ("1K", "unknown suffix \"K\""),
            ("-1Gi", "negative"),
            ("Gi", "expected a number"),
            ("1e", "invalid exponent"),
            ("1e99", "too large"),
            ("100Ei", "too large"),
            ("1 Gi", "unknown suffix"),
        ] {
            let err = parse_memory(text).expect_err(text);
            assert!(err.0.contains(why), "{text}: {err}");
            assert!(err.0.contains(&format!("\"{text}\"")), "{err}");
        }
    }

    proptest! {
        #[test]
        fn memory_round_trips(bytes: u64) {
            prop_assert_eq!(parse_memory(&bytes.to_string()), Ok(bytes));
        }

        #[test]
        fn memory_binary_suffix(count in 0u64..(1 << 40)) {
            prop_assert_eq!(parse_memory(&format!("{count}Mi")), Ok(count << 20));
        }

        #[test]
        fn cpu_round_trips_through_format(millis in 0u64..u64::MAX / 1000) {
            prop_assert_eq!(parse_cpu(&format_cpu(millis)), Ok(millis));
            prop_assert_eq!(parse_cpu(&format!("{millis}m")), Ok(millis));
        }
    }
}
