//! `drover login`, `drover whoami`, `drover token …`, `drover gossip …` and `drover ca …`.

use drover_proto::pb;
use serde::Serialize;

use crate::client::{self, connect, refused};
use crate::output::{Format, age, now_unix_ms, print_json, print_table, say, table};

/// Checks the token in use against the coordinator and saves it for later commands.
pub async fn login(target: &str) -> anyhow::Result<()> {
    let token = match crate::client::current_token() {
        Some(token) => token,
        None => anyhow::bail!("drover login needs a token: --token TOKEN or DROVER_TOKEN"),
    };
    let mut client = connect(target).await?;
    let me = client
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map_err(|s| refused("login", s))?
        .into_inner();
    let path = client::login_file()
        .ok_or_else(|| anyhow::anyhow!("no user config directory to keep the token in"))?;
    drover_security::files::write_atomic(&path, format!("{}\n", token.reveal()).as_bytes(), true)?;
    say!(
        "Logged in to {target} as {:?} ({} role); the token is kept in {}",
        me.name,
        me.role,
        path.display()
    );
    Ok(())
}

/// Shows the token in use.
pub async fn whoami(target: &str) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let me = client
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map_err(|s| refused("whoami", s))?
        .into_inner();
    say!("{} ({} role, id {})", me.name, me.role, me.id);
    Ok(())
}

/// Makes a token and prints it once.
pub async fn create(
    target: &str,
    name: &str,
    role: &str,
    ttl: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let made = client
        .create_token(pb::CreateTokenRequest {
            name: name.to_string(),
            role: role.to_string(),
            ttl_seconds: ttl.map(|t| t.as_secs().max(1)).unwrap_or(0),
        })
        .await
        .map_err(|s| refused(&format!("create token {name:?}"), s))?
        .into_inner();
    // The token alone on stdout, so scripts can capture it; the rest on stderr.
    println!("{}", made.token);
    eprintln!(
        "{role} token {name:?} created; it is shown only now. {}",
        if role == "agent" {
            "Put it in the agent's config (/etc/drover/agent.toml: token = \"...\")."
        } else {
            "Use it with --token, DROVER_TOKEN or `drover login`."
        }
    );
    Ok(())
}

#[derive(Serialize)]
struct TokenRow {
    id: String,
    name: String,
    role: String,
    created_unix_ms: u64,
    expires_unix_ms: u64,
    created_by: String,
}

/// Lists tokens.
pub async fn list(target: &str, format: Format) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let tokens = client
        .list_tokens(pb::ListTokensRequest {})
        .await
        .map_err(|s| refused("list tokens", s))?
        .into_inner()
        .tokens;
    let rows: Vec<TokenRow> = tokens
        .into_iter()
        .map(|t| TokenRow {
            id: t.id,
            name: t.name,
            role: t.role,
            created_unix_ms: t.created_unix_ms,
            expires_unix_ms: t.expires_unix_ms,
            created_by: t.created_by,
        })
        .collect();
    if format == Format::Json {
        return print_json(&rows);
    }
    let now = now_unix_ms();
    let mut t = table(&["ID", "NAME", "ROLE", "AGE", "EXPIRES", "CREATED BY"]);
    for r in &rows {
        let expires = match r.expires_unix_ms {
            0 => "never".to_string(),
            at if at <= now => "expired".to_string(),
            at => format!("in {}", age(now, at)),
        };
        t.add_row(vec![
            r.id.clone(),
            r.name.clone(),
            r.role.clone(),
            age(r.created_unix_ms, now),
            expires,
            r.created_by.clone(),
        ]);
    }
    print_table(&t);
    Ok(())
}

/// Revokes a token.
pub async fn revoke(target: &str, token: &str) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let info = client
        .revoke_token(pb::RevokeTokenRequest {
            token: token.to_string(),
        })
        .await
        .map_err(|s| refused(&format!("revoke token {token:?}"), s))?
        .into_inner();
    say!("token {:?} ({}) revoked", info.name, info.id);
    Ok(())
}

/// Lists or changes the gossip keyring.
pub async fn gossip_key(
    target: &str,
    action: pb::gossip_key_request::Action,
    key: String,
) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let ring = client
        .gossip_key(pb::GossipKeyRequest {
            action: action as i32,
            key,
        })
        .await
        .map_err(|s| refused("gossip keys", s))?
        .into_inner();
    for (i, id) in ring.key_ids.iter().enumerate() {
        say!("{id}{}", if i == 0 { "  (in use)" } else { "" });
    }
    Ok(())
}

/// `drover ca status|rotate|finish`.
pub async fn ca(target: &str, action: pb::ca_request::Action, force: bool) -> anyhow::Result<()> {
    let mut client = connect(target).await?;
    let status = client
        .certificate_authority(pb::CaRequest {
            action: action as i32,
            force,
        })
        .await
        .map_err(|s| refused("the cluster CA", s))?
        .into_inner();
    let others: Vec<&str> = status
        .trusted
        .iter()
        .map(String::as_str)
        .filter(|d| *d != status.digest)
        .collect();
    say!("Signing CA:  {}", status.digest);
    if !others.is_empty() {
        say!("Also trusted: {}", others.join(", "));
    }
    let list = |nodes: &[String]| {
        if nodes.is_empty() {
            "none".to_string()
        } else {
            nodes.join(", ")
        }
    };
    say!("Nodes on it: {}", list(&status.nodes_current));
    if status.rotating {
        say!("Waiting:     {}", list(&status.nodes_waiting));
        say!();
        say!("A rotation is in progress: connected nodes renew their certificates within");
        say!("seconds; run `drover ca finish` once no node is waiting. Tokens made before the");
        say!("rotation keep working until then; after it, their middle part must be the new");
        say!("digest above (the coordinator's admin.token and agent.token files already are).");
    }
    Ok(())
}
