use std::fmt;
use std::path::PathBuf;

/// A configuration problem, located at the file, line and option that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    /// 1-based line number; 0 when the problem is not tied to a line.
    pub line: usize,
    pub option: Option<String>,
    pub value: Option<String>,
    /// Description of the problem and its fix, as a lowercase sentence.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) if self.line > 0 => write!(f, "{}:{}: ", file.display(), self.line)?,
            Some(file) => write!(f, "{}: ", file.display())?,
            None if self.line > 0 => write!(f, "line {}: ", self.line)?,
            None => {}
        }
        match (&self.option, &self.value) {
            // A command-line flag reads as it was typed: `--accept 8443`.
            (Some(option), Some(value)) if option.starts_with("--") => {
                write!(f, "{option} {value}: ")?
            }
            (Some(option), Some(value)) => write!(f, "{option} = {value}: ")?,
            (Some(option), None) => write!(f, "{option}: ")?,
            _ => {}
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}
