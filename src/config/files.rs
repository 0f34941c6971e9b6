//! Checks shared by every flag that names a file, a URL or a duration, and the one reader of
//! secret files.

use std::path::Path;
use std::time::Duration;

use http::Uri;
use secrecy::SecretString;

use super::{ConfigError, err};

pub(super) fn positive(flag: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(err(flag, "must be greater than zero"));
    }
    Ok(())
}

pub(crate) fn https_url(
    flag: &'static str,
    value: Option<&str>,
    provider: &str,
) -> Result<Uri, ConfigError> {
    let value =
        value.ok_or_else(|| err(flag, format!("is required with --provider {provider}")))?;
    let uri: Uri = value
        .parse()
        .map_err(|e| err(flag, format!("{value:?} is not a valid URL: {e}")))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") => {
            return Err(err(
                flag,
                format!("{value:?} uses http://; credentials and tokens only travel over https://"),
            ));
        }
        _ => {
            return Err(err(
                flag,
                format!("{value:?} must be an absolute https:// URL"),
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(err(flag, format!("{value:?} has no host")));
    }
    Ok(uri)
}

pub(super) fn readable_file(flag: &'static str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => std::fs::File::open(path)
            .map(drop)
            .map_err(|e| err(flag, format!("{}: cannot read: {e}", path.display()))),
        Ok(_) => Err(err(flag, format!("{}: not a regular file", path.display()))),
        Err(e) => Err(err(flag, format!("{}: {e}", path.display()))),
    }
}

#[cfg(unix)]
pub(super) fn permissive_mode(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "is readable by every user (mode {:o}); chmod 600 it",
            mode & 0o777
        )
    })
}

#[cfg(not(unix))]
pub(super) fn permissive_mode(_: &Path) -> Option<String> {
    None
}

pub(super) fn read_secret(
    flag: &'static str,
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<SecretString, ConfigError> {
    readable_file(flag, path)?;
    let secret = read_non_empty_secret(path).map_err(|e| err(flag, e))?;
    if let Some(w) = permissive_mode(path) {
        warnings.push(format!("{flag} {}: {w}", path.display()));
    }
    Ok(secret)
}

/// Read a secret file. Secret files usually end with a newline (`echo`, `kubectl create
/// secret --from-file`), which is not part of the secret.
pub(super) fn read_secret_file(path: &Path) -> std::io::Result<SecretString> {
    let text = std::fs::read_to_string(path)?;
    Ok(SecretString::from(
        text.trim_end_matches(['\r', '\n']).to_owned(),
    ))
}

/// [`read_secret_file`], refusing an empty secret; the error names the file.
pub(super) fn read_non_empty_secret(path: &Path) -> Result<SecretString, String> {
    use secrecy::ExposeSecret;
    let secret =
        read_secret_file(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if secret.expose_secret().is_empty() {
        return Err(format!("{}: file is empty", path.display()));
    }
    Ok(secret)
}
