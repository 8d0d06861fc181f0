//! Cluster profiles: where a cluster is and where its token lives (never the token itself).
//!
//! ```toml
//! # ~/.config/cellbench/clusters.toml (or $CELLBENCH_CONFIG/clusters.toml)
//! [[profile]]
//! name = "lab"
//! address = "https://ray.lab.example.org:8443"
//! token_env = "CELLBENCH_RAY_TOKEN"            # read first, if set
//! token_file = "~/.config/cellbench/lab.token" # otherwise this file (trimmed)
//! verify_tls = true
//! [profile.headers]                             # extra headers for a proxy in front of Ray
//! "CF-Access-Client-Id" = "${LAB_ACCESS_ID}"    # ${VAR} is taken from the environment
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ClusterError, Result};

/// A secret value (a token or a header value that may carry credentials). Its `Debug` and
/// `Display` print `***`; the value is only reachable through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for putting into a request header. Never log or format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a token was (or would be) read from; used in messages instead of the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Env(String),
    File(PathBuf),
    None,
}

/// One cluster the user can submit to. `Debug` shows header names only.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterProfile {
    pub name: String,
    /// `http://host:port` or `https://host:port` of the Ray dashboard (default port 8265).
    pub address: String,
    /// Environment variable holding the token; checked before `token_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// File holding the token (surrounding whitespace is ignored); `~/` is the home folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Extra headers, e.g. for an authenticating proxy; values may reference `${VAR}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_true")]
    pub verify_tls: bool,
}

impl fmt::Debug for ClusterProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterProfile")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("token_env", &self.token_env)
            .field("token_file", &self.token_file)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("verify_tls", &self.verify_tls)
            .finish()
    }
}

fn default_true() -> bool {
    true
}

impl ClusterProfile {
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> Self {
        ClusterProfile {
            name: name.into(),
            address: address.into(),
            token_env: None,
            token_file: None,
            headers: BTreeMap::new(),
            verify_tls: true,
        }
    }

    /// Checks the address and headers; called by [`Profiles::parse`] and by clients.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| ClusterError::Config {
            location: format!("profile '{}'", self.name),
            message,
        };
        if self.name.trim().is_empty() {
            return Err(bad("the profile has no name".into()));
        }
        let rest = self
            .address
            .strip_prefix("http://")
            .or_else(|| self.address.strip_prefix("https://"))
            .ok_or_else(|| {
                bad(
                    "address must start with http:// or https:// (e.g. http://127.0.0.1:8265)"
                        .into(),
                )
            })?;
        let authority = rest.split('/').next().unwrap_or("");
        if authority.contains('@') {
            return Err(bad(
                "address must not contain credentials; use token_env or token_file".into(),
            ));
        }
        if authority.is_empty() || rest.contains(['?', '#', ' ']) {
            return Err(bad(format!(
                "address {:?} is not a valid http(s) URL",
                self.address
            )));
        }
        for name in self.headers.keys() {
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !valid_name {
                return Err(bad(format!(
                    "header name {name:?} is not a valid HTTP header name"
                )));
            }
            if name.eq_ignore_ascii_case("authorization") {
                return Err(bad(
                    "the Authorization header is set from token_env/token_file, not from headers"
                        .into(),
                ));
            }
        }
        if self
            .token_env
            .as_deref()
            .is_some_and(|v| v.trim().is_empty())
        {
            return Err(bad("token_env is empty".into()));
        }
        Ok(())
    }

    /// The dashboard address without a trailing slash.
    pub fn base_url(&self) -> &str {
        self.address.trim_end_matches('/')
    }

    /// True for `https://` addresses.
    pub fn is_tls(&self) -> bool {
        self.address.starts_with("https://")
    }

    /// The token, from `token_env` if that variable is set and non-empty, else from
    /// `token_file`. `Ok(None)` when the profile names neither.
    pub fn token(&self) -> Result<Option<Secret>> {
        Ok(self.resolve_token()?.0)
    }

    /// Like [`ClusterProfile::token`], also saying where the token came from.
    pub fn resolve_token(&self) -> Result<(Option<Secret>, TokenSource)> {
        if let Some(var) = &self.token_env {
            match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => {
                    let secret = checked_token(v.trim(), &TokenSource::Env(var.clone()))?;
                    return Ok((Some(secret), TokenSource::Env(var.clone())));
                }
                _ if self.token_file.is_some() => {}
                _ => {
                    return Err(ClusterError::MissingToken {
                        message: if looks_like_env_name(var) {
                            format!(
                                "environment variable {var} (token_env of profile '{}') is not set",
                                self.name
                            )
                        } else {
                            format!(
                                "the environment variable named by token_env of profile '{}' is not set, \
                                 and that name does not look like a variable name: token_env must hold \
                                 the variable's name, not the token",
                                self.name
                            )
                        },
                    });
                }
            }
        }
        if let Some(file) = &self.token_file {
            let path = expand_home(file);
            let source = TokenSource::File(path.clone());
            let text =
                crate::fs::read_to_string(&path).map_err(|e| ClusterError::MissingToken {
                    message: format!(
                        "cannot read token file {} (token_file of profile '{}'): {}",
                        path.display(),
                        self.name,
                        e.kind()
                    ),
                })?;
            warn_if_readable_by_others(&path);
            let value = text.trim();
            if value.is_empty() {
                return Err(ClusterError::MissingToken {
                    message: format!("token file {} is empty", path.display()),
                });
            }
            return Ok((Some(checked_token(value, &source)?), source));
        }
        Ok((None, TokenSource::None))
    }

    /// Header values with `${VAR}` replaced from the environment.
    pub fn resolved_headers(&self) -> Result<Vec<(String, Secret)>> {
        self.headers
            .iter()
            .map(|(name, template)| {
                let value = expand_env(template).map_err(|var| ClusterError::Config {
                    location: format!("profile '{}'", self.name),
                    message: format!("header {name} uses ${{{var}}}, which is not set"),
                })?;
                if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                    return Err(ClusterError::Config {
                        location: format!("profile '{}'", self.name),
                        message: format!("the value of header {name} contains control characters"),
                    });
                }
                Ok((name.clone(), Secret::new(value)))
            })
            .collect()
    }
}

/// `UPPER_CASE_NAME` of reasonable length; anything else might be a token pasted by mistake
/// and is not repeated in messages.
fn looks_like_env_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Drops quoted values from a parser message (they could be secrets put in the wrong place).
fn without_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut inside = false;
    for c in message.chars() {
        if c == '"' {
            if !inside {
                out.push_str("\"…\"");
            }
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

fn checked_token(value: &str, source: &TokenSource) -> Result<Secret> {
    if value.bytes().any(|b| b < 0x21 || b == 0x7f) {
        return Err(ClusterError::MissingToken {
            message: format!(
                "the token from {} contains spaces or control characters",
                super::describe_source(source)
            ),
        });
    }
    Ok(Secret::new(value))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = crate::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        log::warn!(
            "token file {} can be read by other users; restrict it with `chmod 600`",
            path.display()
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

/// `~/x` → `$HOME/x`; other paths unchanged.
pub fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), home_dir()) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => path.to_path_buf(),
    }
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// Replaces every `${VAR}`; returns the name of the first unset variable as the error.
fn expand_env(template: &str) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let var = &after[..end];
        match std::env::var(var) {
            Ok(v) => out.push_str(&v),
            Err(_) => return Err(var.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// All profiles of a `clusters.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profiles {
    #[serde(default, rename = "profile")]
    pub profiles: Vec<ClusterProfile>,
}

/// Keys that would hold a secret value; refused so that nobody stores a token in the file.
const SECRET_KEYS: &[&str] = &["token", "password", "secret", "api_key", "apikey", "bearer"];

impl Profiles {
    /// `$CELLBENCH_CONFIG/clusters.toml`, else `~/.config/cellbench/clusters.toml`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("CELLBENCH_CONFIG").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("clusters.toml"));
        }
        home_dir().map(|h| h.join(".config").join("cellbench").join("clusters.toml"))
    }

    /// Loads the default file; a missing file means no profiles.
    pub fn load_default() -> Result<Self> {
        match Self::default_path() {
            Some(path) if path.exists() => Self::load(&path),
            _ => Ok(Profiles::default()),
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::fs::read_to_string(path)
            .map_err(|e| ClusterError::io(format!("reading {}", path.display()), e))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses `clusters.toml` text. Error messages give a line number but never quote the
    /// file, which might (wrongly) contain a secret.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let err = |line: Option<usize>, message: String| ClusterError::Config {
            location: match line {
                Some(l) => format!("{origin}, line {l}"),
                None => origin.to_string(),
            },
            message,
        };
        let line_of = |span: Option<std::ops::Range<usize>>| {
            span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
        };
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| err(line_of(e.span()), without_quoted(e.message())))?;
        if let Some(toml::Value::Array(items)) = table.get("profile") {
            for (i, item) in items.iter().enumerate() {
                if let toml::Value::Table(t) = item {
                    let name = t.get("name").and_then(|v| v.as_str()).unwrap_or("?");
                    if let Some(key) = t
                        .keys()
                        .find(|k| SECRET_KEYS.contains(&k.to_ascii_lowercase().as_str()))
                    {
                        return Err(err(
                            None,
                            format!(
                                "profile #{} ('{name}') has a `{key}` entry; cellbench never stores tokens in \
                                 this file: remove it and set token_env or token_file instead",
                                i + 1
                            ),
                        ));
                    }
                }
            }
        }
        let profiles: Profiles = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| err(None, without_quoted(e.message())))?;
        let mut seen = std::collections::BTreeSet::new();
        for p in &profiles.profiles {
            p.validate().map_err(|e| match e {
                ClusterError::Config { location, message } => {
                    err(None, format!("{location}: {message}"))
                }
                other => other,
            })?;
            if !seen.insert(p.name.as_str()) {
                return Err(err(None, format!("two profiles are named '{}'", p.name)));
            }
        }
        Ok(profiles)
    }

    pub fn get(&self, name: &str) -> Result<&ClusterProfile> {
        self.profiles
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.profiles.iter().map(|p| p.name.as_str()).collect();
                ClusterError::Config {
                    location: "cluster profiles".into(),
                    message: if known.is_empty() {
                        format!(
                            "no profile named '{name}' (no profiles are defined; see {})",
                            Self::default_path()
                                .map(|p| p.display().to_string())
                                .unwrap_or_default()
                        )
                    } else {
                        format!("no profile named '{name}' (known: {})", known.join(", "))
                    },
                }
            })
    }

    pub fn to_toml_string(&self) -> String {
        toml::to_string_pretty(self).expect("profiles always serialise")
    }

    /// Writes atomically (temporary file + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            crate::fs::create_dir_all(dir)
                .map_err(|e| ClusterError::io(format!("creating {}", dir.display()), e))?;
        }
        let tmp = path.with_extension("toml.tmp");
        crate::fs::write(&tmp, self.to_toml_string())
            .and_then(|()| crate::fs::rename(&tmp, path))
            .map_err(|e| ClusterError::io(format!("writing {}", path.display()), e))
    }
}

#[cfg(test)]
#[allow(unsafe_code)] // set_var in tests, one variable name per test
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[[profile]]
name = "local"
address = "http://127.0.0.1:8265"
token_env = "CB_TEST_TOKEN_LOCAL"

[[profile]]
name = "lab"
address = "https://ray.lab.example.org:8443/"
token_file = "~/lab.token"
verify_tls = false
[profile.headers]
"CF-Access-Client-Id" = "id-${CB_TEST_HEADER_VAR}-x"
"#;

    #[test]
    fn parses_profiles_with_defaults() {
        let p = Profiles::parse(EXAMPLE, "test").unwrap();
        assert_eq!(p.profiles.len(), 2);
        let local = p.get("local").unwrap();
        assert!(local.verify_tls);
        assert_eq!(local.token_env.as_deref(), Some("CB_TEST_TOKEN_LOCAL"));
        let lab = p.get("lab").unwrap();
        assert!(!lab.verify_tls);
        assert_eq!(lab.base_url(), "https://ray.lab.example.org:8443");
        assert!(lab.is_tls());
        let round = Profiles::parse(&p.to_toml_string(), "round trip").unwrap();
        assert_eq!(round, p);
        let e = p.get("nope").unwrap_err().to_string();
        assert!(e.contains("known: local, lab"), "{e}");
    }

    #[test]
    fn refuses_stored_tokens_without_quoting_them() {
        let text = "[[profile]]\nname = \"x\"\naddress = \"http://h:8265\"\ntoken = \"sekrit-value-123\"\n";
        let e = Profiles::parse(text, "clusters.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("never stores tokens"), "{e}");
        assert!(!e.contains("sekrit-value-123"), "{e}");
        // A syntax error on a line holding a secret must not echo the line either.
        let text = "[[profile]]\nname = \"x\"\naddress = \"http://h:8265\"\nheaders = { a = \"sekrit-value-123\" \n";
        let e = Profiles::parse(text, "clusters.toml")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("sekrit-value-123"), "{e}");
        assert!(e.contains("line"), "{e}");
        let text = "[[profile]]\nname = \"x\"\naddress = \"http://h:8265\"\nverify_tls = \"sekrit-value-123\"\n";
        let e = Profiles::parse(text, "clusters.toml")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("sekrit-value-123"), "{e}");
    }

    #[test]
    fn validates_addresses_and_headers() {
        for bad in [
            "127.0.0.1:8265",
            "ftp://h",
            "http://user:pw@h:8265",
            "http://",
        ] {
            assert!(ClusterProfile::new("x", bad).validate().is_err(), "{bad}");
        }
        ClusterProfile::new("x", "http://127.0.0.1:8265")
            .validate()
            .unwrap();
        let mut p = ClusterProfile::new("x", "http://h:1");
        p.headers.insert("Authorization".into(), "x".into());
        assert!(p.validate().is_err());
        let dup = "[[profile]]\nname=\"a\"\naddress=\"http://h:1\"\n[[profile]]\nname=\"a\"\naddress=\"http://h:2\"\n";
        assert!(
            Profiles::parse(dup, "t")
                .unwrap_err()
                .to_string()
                .contains("two profiles")
        );
    }

    #[test]
    fn token_from_env_then_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tok");
        crate::fs::write(&file, "  file-token-abc\n").unwrap();
        let mut p = ClusterProfile::new("t", "http://h:1");
        assert_eq!(p.token().unwrap(), None);

        p.token_env = Some("CB_TEST_TOKEN_UNSET_1".into());
        let e = p.token().unwrap_err().to_string();
        assert!(e.contains("CB_TEST_TOKEN_UNSET_1"), "{e}");
        // A token pasted into token_env by mistake is not repeated.
        p.token_env = Some("f3a9c0d1e2b4a5968776655443322110".into());
        let e = p.token().unwrap_err().to_string();
        assert!(
            !e.contains("f3a9c0d1e2b4a5968776655443322110") && e.contains("not the token"),
            "{e}"
        );
        p.token_env = Some("CB_TEST_TOKEN_UNSET_1".into());

        p.token_file = Some(file.clone());
        let (tok, src) = p.resolve_token().unwrap();
        assert_eq!(tok.unwrap().expose(), "file-token-abc");
        assert_eq!(src, TokenSource::File(file.clone()));

        // SAFETY: this test is the only user of this variable name.
        unsafe { std::env::set_var("CB_TEST_TOKEN_SET_2", " env-token-xyz ") };
        p.token_env = Some("CB_TEST_TOKEN_SET_2".into());
        let (tok, src) = p.resolve_token().unwrap();
        let tok = tok.unwrap();
        assert_eq!(tok.expose(), "env-token-xyz");
        assert_eq!(src, TokenSource::Env("CB_TEST_TOKEN_SET_2".into()));
        assert_eq!(
            format!("{tok} {tok:?} {:?}", Some(&tok)),
            "*** *** Some(***)"
        );

        crate::fs::write(&file, "\n").unwrap();
        p.token_env = None;
        assert!(p.token().unwrap_err().to_string().contains("is empty"));
        p.token_file = Some(dir.path().join("missing"));
        assert!(
            p.token()
                .unwrap_err()
                .to_string()
                .contains("cannot read token file")
        );
    }

    #[test]
    fn headers_expand_env() {
        // SAFETY: this test is the only user of this variable name.
        unsafe { std::env::set_var("CB_TEST_HEADER_VAR", "v42") };
        let p = Profiles::parse(EXAMPLE, "t").unwrap();
        let h = p.get("lab").unwrap().resolved_headers().unwrap();
        assert_eq!(h[0].0, "CF-Access-Client-Id");
        assert_eq!(h[0].1.expose(), "id-v42-x");
        let mut q = ClusterProfile::new("q", "http://h:1");
        q.headers
            .insert("X-A".into(), "${CB_TEST_HEADER_UNSET_9}".into());
        let e = q.resolved_headers().unwrap_err().to_string();
        assert!(e.contains("CB_TEST_HEADER_UNSET_9"), "{e}");
        assert_eq!(expand_env("a${").unwrap(), "a${");
    }

    #[test]
    fn default_path_honours_cellbench_config() {
        // Only reads the variable when set; other tests do not touch it.
        let p = Profiles::default_path().unwrap();
        assert!(p.ends_with("clusters.toml"));
    }
}
