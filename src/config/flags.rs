//! The command-line form: one service built from flags instead of a file.

use std::path::Path;

use super::value::{self, PortZero, Resolver};
use super::{
    CertSource, Config, ConfigError, Flags, Global, Origin, Service, Timeouts, TlsVersion,
};

pub(super) fn config_from_flags(flags: &Flags, resolve: Resolver) -> Result<Config, ConfigError> {
    let accept = address_flag("--accept", &flags.accept, PortZero::Allowed, resolve)?;
    let connect = address_flag("--connect", &flags.connect, PortZero::Rejected, resolve)?;

    let certs = match (&flags.cert, &flags.key) {
        (None, Some(key)) => {
            return Err(flag_error(
                "--key",
                Some(&key.display().to_string()),
                "a key needs its certificate; add --cert or remove --key".to_string(),
            ))
        }
        (None, None) => Vec::new(),
        (Some(cert), key) => {
            readable_flag("--cert", cert)?;
            if let Some(key) = key {
                readable_flag("--key", key)?;
            }
            vec![CertSource {
                cert: cert.clone(),
                key: key.clone(),
                origin: Origin {
                    file: None,
                    line: 0,
                    option: "--cert".to_string(),
                },
                key_origin: key.as_ref().map(|_| Origin {
                    file: None,
                    line: 0,
                    option: "--key".to_string(),
                }),
            }]
        }
    };

    if let Some(threads) = flags.threads {
        if !(1..=1024).contains(&threads) {
            return Err(flag_error(
                "--threads",
                Some(&threads.to_string()),
                "invalid thread count; use a whole number from 1 to 1024".to_string(),
            ));
        }
    }

    let global = Global {
        foreground: true,
        log_stderr: true,
        syslog: false,
        output: None,
        threads: flags.threads,
        ..Global::default()
    };
    let service = Service {
        name: "default".to_string(),
        accept,
        connect: vec![connect],
        local: None,
        self_signed: certs.is_empty(),
        certs,
        sni: Vec::new(),
        alpn: Vec::new(),
        tls_min: TlsVersion::Tls12,
        tls_max: TlsVersion::Tls13,
        cipher_suites: None,
        timeouts: Timeouts::default(),
        ktls: Default::default(),
        proxy_protocol: None,
        accept_proxy: false,
        transparent_source: false,
    };
    Ok(Config {
        source: None,
        global,
        services: vec![service],
    })
}

fn address_flag(
    flag: &str,
    text: &str,
    zero: PortZero,
    resolve: Resolver,
) -> Result<super::Address, ConfigError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(flag_error(
            flag,
            None,
            format!("missing value; give an address such as {flag} 127.0.0.1:8443"),
        ));
    }
    value::address(text, zero, resolve).map_err(|message| flag_error(flag, Some(text), message))
}

fn readable_flag(flag: &str, path: &Path) -> Result<(), ConfigError> {
    value::readable_file(path)
        .map_err(|message| flag_error(flag, Some(&path.display().to_string()), message))
}

fn flag_error(flag: &str, value: Option<&str>, message: String) -> ConfigError {
    ConfigError {
        file: None,
        line: 0,
        option: Some(flag.to_string()),
        value: value.map(str::to_string),
        message,
    }
}
