//! Errors an operator reads: `file:line: what is wrong`.

use std::fmt;

/// One problem found in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as named by the caller (or e.g. `<inline>`), so the message says where to look.
    pub origin: String,
    /// 1-based line of the offending key or value, when the problem has one.
    pub line: Option<usize>,
    /// What is wrong, worded for the operator.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(origin: &str, line: Option<usize>, message: impl Into<String>) -> Self {
        ConfigError {
            origin: origin.to_owned(),
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.origin, line, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one file, in line order; never empty when returned as an error.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    /// One error per line, no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_with_and_without_line() {
        let with = ConfigError::new("a.toml", Some(3), "bad");
        let without = ConfigError::new("a.toml", None, "cannot read");
        assert_eq!(with.to_string(), "a.toml:3: bad");
        assert_eq!(without.to_string(), "a.toml: cannot read");
        assert_eq!(
            ConfigErrors(vec![with, without]).to_string(),
            "a.toml:3: bad\na.toml: cannot read"
        );
    }
}
