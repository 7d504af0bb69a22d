//! Connecting to the coordinator, with errors that say where and why.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use drover_security::Token;
use drover_security::client::{self, ConnectError, OperatorAuth};

pub use drover_security::client::Control;

/// Where the CLI found its credentials, decided once in `main`.
static AUTH: OnceLock<Auth> = OnceLock::new();

/// The operator's credentials for this invocation.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A token, and where it came from (for error messages).
    Token(Token, String),
    /// No TLS: only for an insecure (test) coordinator.
    Insecure,
    /// None found: every call fails with this explanation.
    Missing(String),
}

/// Sets the credentials `connect` uses; the first call wins.
pub fn set_auth(auth: Auth) {
    let _ = AUTH.set(auth);
}

/// The file `drover login` keeps the token in: `~/.config/drover/token`.
pub fn login_file() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("drover").join("token"))
}

/// The admin token `drover dev` writes, in its default data dir.
pub fn dev_token_file() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("drover").join("dev").join("admin.token"))
}

/// The admin token a coordinator installed from the packages writes.
pub const PACKAGE_TOKEN_FILE: &str = "/var/lib/drover/admin.token";

/// Finds the token: `--token`/`DROVER_TOKEN`, then `--token-file`/`DROVER_TOKEN_FILE`, then
/// the file `drover login` wrote, then `drover dev`'s admin token, then the admin token of a
/// coordinator installed on this host (readable by root).
pub fn resolve_auth(token: Option<&str>, token_file: Option<&Path>, insecure: bool) -> Auth {
    if insecure {
        return Auth::Insecure;
    }
    let parse = |text: &str, from: String| match text.parse::<Token>() {
        Ok(token) => Auth::Token(token, from),
        Err(e) => Auth::Missing(format!("the token from {from} is unusable: {e}")),
    };
    if let Some(text) = token {
        return parse(text, "--token/DROVER_TOKEN".into());
    }
    if let Some(path) = token_file {
        return match std::fs::read_to_string(path) {
            Ok(text) => parse(&text, path.display().to_string()),
            Err(e) => Auth::Missing(format!(
                "cannot read the token file {}: {e}",
                path.display()
            )),
        };
    }
    let candidates = [
        login_file(),
        dev_token_file(),
        Some(PathBuf::from(PACKAGE_TOKEN_FILE)),
    ];
    for path in candidates.into_iter().flatten() {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return parse(&text, path.display().to_string());
        }
    }
    Auth::Missing(
        "no token: pass --token or set DROVER_TOKEN, run `drover login --token ...`, or run as \
         root on the coordinator's host (it reads /var/lib/drover/admin.token)"
            .into(),
    )
}

/// The token this invocation uses, if any.
pub fn current_token() -> Option<Token> {
    match AUTH.get() {
        Some(Auth::Token(token, _)) => Some(token.clone()),
        _ => None,
    }
}

/// This invocation's session, per coordinator address: one join for a client certificate
/// per run, however many calls (or polling loops) the command makes.
static SESSION: std::sync::Mutex<Option<(String, Control)>> = std::sync::Mutex::new(None);

/// Connects to the coordinator's Control API at `target` with this invocation's credentials.
pub async fn connect(target: &str) -> anyhow::Result<Control> {
    let cached = SESSION.lock().ok().and_then(|s| {
        s.as_ref()
            .filter(|(t, _)| t == target)
            .map(|(_, c)| c.clone())
    });
    if let Some(client) = cached {
        return Ok(client);
    }
    let auth = AUTH
        .get()
        .cloned()
        .unwrap_or(Auth::Missing("no credentials set".into()));
    let (auth, from) = match auth {
        Auth::Token(token, from) => (OperatorAuth::Token(token), from),
        Auth::Insecure => (OperatorAuth::Insecure, String::new()),
        Auth::Missing(why) => anyhow::bail!("{why}"),
    };
    let client = client::operator(target, &auth).await.map_err(|e| match e {
        ConnectError::Unreachable { .. } => anyhow::anyhow!(
            "{e} (is drover-coordinator running? set --coordinator or DROVER_COORDINATOR)"
        ),
        ConnectError::Refused { .. } => anyhow::anyhow!("{e} (token from {from})"),
        ConnectError::Invalid(_) => anyhow::anyhow!("{e}"),
    })?;
    // A cluster's full status can be large; the coordinator bounds what it sends.
    let client = client.max_decoding_message_size(MAX_RESPONSE_BYTES);
    if let Ok(mut session) = SESSION.lock() {
        *session = Some((target.to_string(), client.clone()));
    }
    Ok(client)
}

/// Largest answer the CLI reads from the coordinator.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// Turns a gRPC error into one line naming what was asked. A request over the
/// coordinator's size limit says what is too big and how to raise the limit, not tonic's
/// "decoded message length too large".
pub fn refused(what: &str, status: tonic::Status) -> anyhow::Error {
    if let Some((found, limit)) = too_large(status.message()) {
        return anyhow::anyhow!(
            "{what}: the request is {found} bytes, over the coordinator's limit of {limit} bytes (send fewer manifests at once, or raise limits.request_bytes in the coordinator's config)"
        );
    }
    anyhow::anyhow!("{what}: {}", status.message())
}

/// The sizes in tonic's "decoded message length too large: found 20971529 bytes, the limit
/// is: 16777216 bytes".
fn too_large(message: &str) -> Option<(u64, u64)> {
    const PHRASE: &str = "decoded message length too large: found ";
    let rest = &message[message.find(PHRASE)? + PHRASE.len()..];
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some((found.parse().ok()?, limit.parse().ok()?))
}

/// One service's status from the coordinator; `what` names the request in errors.
pub async fn service_status(
    client: &mut Control,
    service: &str,
    what: &str,
) -> anyhow::Result<drover_proto::pb::ServiceStatus> {
    Ok(client
        .get_service(drover_proto::pb::GetServiceRequest {
            name: service.to_string(),
        })
        .await
        .map_err(|s| {
            let name = drover_proto::manifest::excerpt(service);
            refused(&format!("{what} of {name}"), s)
        })?
        .into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_flag_then_the_file_and_bad_ones_say_why() {
        let digest = drover_security::CaDigest::of(b"ca");
        let flag = Token::generate(digest);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        let in_file = Token::generate(digest);
        std::fs::write(&file, format!("{}\n", in_file.reveal())).expect("write");

        let from_flag = resolve_auth(Some(&flag.reveal()), Some(&file), false);
        assert!(matches!(from_flag, Auth::Token(t, _) if t == flag));
        let from_file = resolve_auth(None, Some(&file), false);
        assert!(matches!(from_file, Auth::Token(t, _) if t == in_file));
        assert!(matches!(
            resolve_auth(Some("x"), None, true),
            Auth::Insecure
        ));
        let Auth::Missing(why) = resolve_auth(Some("K10abc::secret"), None, false) else {
            panic!("a malformed token is no token");
        };
        assert!(
            why.contains("--token/DROVER_TOKEN") && why.contains("malformed"),
            "{why}"
        );
        let Auth::Missing(why) = resolve_auth(None, Some(&dir.path().join("none")), false) else {
            panic!("a missing file is no token");
        };
        assert!(why.contains("cannot read the token file"), "{why}");
    }

    #[test]
    fn a_request_over_the_size_limit_says_what_and_how_to_raise_it() {
        let status = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 20971529 bytes, the limit is: 16777216 bytes",
        );
        let message = refused("apply", status).to_string();
        assert_eq!(
            message,
            "apply: the request is 20971529 bytes, over the coordinator's limit of 16777216 bytes (send fewer manifests at once, or raise limits.request_bytes in the coordinator's config)"
        );
        let other = refused("apply", tonic::Status::invalid_argument("bad"));
        assert_eq!(other.to_string(), "apply: bad");
    }
}
