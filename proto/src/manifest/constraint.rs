//! The string syntax of placement constraints (`zone=a`, `disk in (ssd,nvme)`, `!spot`).

use super::error::ValueError;
use crate::model::{ConstraintOp, LabelConstraint};

/// Parses one constraint. The syntax follows Kubernetes label selectors:
/// `key=value` (or `==`), `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key`, `!key`.
pub fn parse_constraint(text: &str) -> Result<LabelConstraint, ValueError> {
    parse(text.trim()).map_err(|why| ValueError(format!("constraint \"{text}\": {why}")))
}

fn parse(text: &str) -> Result<LabelConstraint, String> {
    if let Some(key) = text.strip_prefix('!') {
        return existence(key.trim(), ConstraintOp::DoesNotExist);
    }
    if let Some((key, value)) = text.split_once("!=") {
        return single(key, value, ConstraintOp::NotEq);
    }
    if let Some((key, value)) = text.split_once("==").or_else(|| text.split_once('=')) {
        return single(key, value, ConstraintOp::Eq);
    }
    let Some((key, rest)) = text.split_once(char::is_whitespace) else {
        return existence(text, ConstraintOp::Exists);
    };
    let rest = rest.trim_start();
    let (op, list) = if let Some(list) = rest.strip_prefix("notin") {
        (ConstraintOp::NotIn, list)
    } else if let Some(list) = rest.strip_prefix("in") {
        (ConstraintOp::In, list)
    } else {
        return Err(format!(
            "expected an operator (=, !=, in, notin) after \"{key}\", found \"{rest}\""
        ));
    };
    let values = value_list(list.trim())?;
    let constraint = LabelConstraint {
        key: key.to_string(),
        op,
        values,
    };
    check(&constraint)?;
    Ok(constraint)
}

fn existence(key: &str, op: ConstraintOp) -> Result<LabelConstraint, String> {
    let constraint = LabelConstraint {
        key: key.to_string(),
        op,
        values: Vec::new(),
    };
    check(&constraint)?;
    Ok(constraint)
}

fn single(key: &str, value: &str, op: ConstraintOp) -> Result<LabelConstraint, String> {
    let constraint = LabelConstraint {
        key: key.trim().to_string(),
        op,
        values: vec![value.trim().to_string()],
    };
    check(&constraint)?;
    Ok(constraint)
}

fn value_list(list: &str) -> Result<Vec<String>, String> {
    let inner = list
        .strip_prefix('(')
        .and_then(|l| l.strip_suffix(')'))
        .ok_or_else(|| format!("expected a list in parentheses such as (a,b), found \"{list}\""))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
}

/// Checks a constraint's key, values and their count for its operator.
pub(crate) fn check(constraint: &LabelConstraint) -> Result<(), String> {
    check_key(&constraint.key)?;
    let count = constraint.values.len();
    let expected = match constraint.op {
        ConstraintOp::Eq | ConstraintOp::NotEq => count == 1,
        ConstraintOp::In | ConstraintOp::NotIn => count >= 1,
        ConstraintOp::Exists | ConstraintOp::DoesNotExist => count == 0,
    };
    if !expected {
        return Err(format!(
            "operator {:?} does not take {count} value(s)",
            constraint.op
        ));
    }
    constraint.values.iter().try_for_each(|v| check_value(v))
}

/// A label key: letters, digits, `-`, `_`, `.` and `/`, starting and ending with a letter or digit.
pub(crate) fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("missing label key".into());
    }
    if key.len() > 253 {
        return Err(format!("label key \"{key}\" is longer than 253 characters"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/');
    if !key.chars().all(allowed) || !starts_and_ends_alphanumeric(key) {
        return Err(format!(
            "invalid label key \"{key}\" (letters, digits, '-', '_', '.', '/', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// A label value: letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit.
pub(crate) fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("missing label value".into());
    }
    if value.len() > 63 {
        return Err(format!(
            "label value \"{value}\" is longer than 63 characters"
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !value.chars().all(allowed) || !starts_and_ends_alphanumeric(value) {
        return Err(format!(
            "invalid label value \"{value}\" (letters, digits, '-', '_', '.', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

fn starts_and_ends_alphanumeric(text: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    alnum(text.chars().next()) && alnum(text.chars().last())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(key: &str, op: ConstraintOp, values: &[&str]) -> LabelConstraint {
        LabelConstraint {
            key: key.into(),
            op,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn syntax_table() {
        let table = [
            ("zone=a", c("zone", ConstraintOp::Eq, &["a"])),
            ("zone == a", c("zone", ConstraintOp::Eq, &["a"])),
            ("env!=dev", c("env", ConstraintOp::NotEq, &["dev"])),
            (
                "disk in (ssd,nvme)",
                c("disk", ConstraintOp::In, &["ssd", "nvme"]),
            ),
            (
                "disk in(ssd, nvme)",
                c("disk", ConstraintOp::In, &["ssd", "nvme"]),
            ),
            ("arch notin (arm)", c("arch", ConstraintOp::NotIn, &["arm"])),
            ("gpu", c("gpu", ConstraintOp::Exists, &[])),
            ("!spot", c("spot", ConstraintOp::DoesNotExist, &[])),
            (
                "topology.kubernetes.io/zone=eu-1",
                c("topology.kubernetes.io/zone", ConstraintOp::Eq, &["eu-1"]),
            ),
        ];
        for (text, expected) in table {
            assert_eq!(parse_constraint(text), Ok(expected.clone()), "{text}");
            // Display gives back a string that parses to the same constraint.
            assert_eq!(
                parse_constraint(&expected.to_string()),
                Ok(expected),
                "{text}"
            );
        }
    }

    #[test]
    fn syntax_errors_name_the_constraint() {
        for (text, why) in [
            ("zone=", "missing label value"),
            ("=a", "missing label key"),
            ("disk in ssd", "list in parentheses"),
            ("disk in ()", "missing label value"),
            ("disk like (a)", "expected an operator"),
            ("!", "missing label key"),
            ("zone=a b", "invalid label value"),
            ("-gpu", "invalid label key"),
        ] {
            let err = parse_constraint(text).expect_err(text);
            assert!(
                err.0.starts_with(&format!("constraint \"{text}\": ")),
                "{err}"
            );
            assert!(err.0.contains(why), "{text}: {err}");
        }
    }
}
