use std::path::Path;

use super::{Config, ConfigError};

/// Reads and validates a configuration file.
pub fn parse_file(path: &Path) -> Result<Config, ConfigError> {
    let _ = path;
    todo!("config parser")
}

/// Parses and validates configuration text; `file` is used in error messages.
pub fn parse_str(text: &str, file: Option<&Path>) -> Result<Config, ConfigError> {
    let _ = (text, file);
    todo!("config parser")
}
