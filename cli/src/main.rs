//! `drover`: the operator's command line.

mod client;
mod commands;
mod dev;
mod files;
mod output;
mod progress;
mod rollout;
mod services;
mod tokens;
mod top;

use clap::{Parser, Subcommand};

use crate::output::Format;

/// Drover: run containerised services on plain Linux hosts.
#[derive(Debug, Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    /// Coordinator gRPC address.
    #[arg(
        long,
        global = true,
        env = "DROVER_COORDINATOR",
        default_value = "127.0.0.1:7400"
    )]
    coordinator: String,
    /// Token to authenticate with (default: the one `drover login` saved, or `drover
    /// dev`'s, or the coordinator's admin token when run as root on its host).
    #[arg(long, global = true, env = "DROVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the token.
    #[arg(long, global = true, env = "DROVER_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Talk plain gRPC to a coordinator started with `insecure = true` (tests only).
    #[arg(long, global = true, env = "DROVER_INSECURE")]
    insecure: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a coordinator and an agent in this process, on loopback (laptop or single edge box).
    Dev(dev::DevArgs),
    /// Create or update services from manifests (Drover's own or Kubernetes Deployment + Service).
    Apply {
        /// Manifest file, directory of *.yaml/*.yml files, or - for standard input. Repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
        /// Validate on the coordinator without storing anything.
        #[arg(long)]
        dry_run: bool,
        /// Follow each changed service's rollout until it completes; exit 1 if one fails.
        #[arg(long, conflicts_with = "dry_run")]
        wait: bool,
        /// With --wait: give up after this long (e.g. 5m).
        #[arg(long, requires = "wait", value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Why, for `drover rollout history` (default "apply").
        #[arg(long, default_value = "")]
        cause: String,
    },
    /// Follow, steer and look back on rollouts of new revisions.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Delete the workload (stopping its replicas), the service and the autoscalers of a
    /// name.
    Delete {
        /// Workload, service or autoscaler name.
        service: String,
        /// Delete only the workload, only the service, or only the autoscalers (an HPA or
        /// VPA applied on its own), of that name.
        #[arg(long, value_parser = ["workload", "service", "autoscaler"])]
        only: Option<String>,
    },
    /// List objects.
    Get {
        /// What to list.
        #[arg(value_enum)]
        what: GetWhat,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Show a service: its revisions and where its replicas run.
    Status {
        /// Service name.
        service: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// What nodes and replicas use (CPU, memory working set, OOM kills), as their agents
    /// last measured, beside what they request.
    Top {
        /// A workload or a service; default: every replica.
        name: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// List nodes with their state and load.
    Nodes {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Stop placing new replicas on a node.
    Cordon {
        /// Node id.
        node: String,
    },
    /// Allow placements on a node again.
    Uncordon {
        /// Node id.
        node: String,
    },
    /// Move a node's replicas elsewhere, then leave it cordoned; follows the drain until
    /// the node is empty.
    Drain {
        /// Node id.
        node: String,
        /// Start the drain and return at once.
        #[arg(long)]
        detach: bool,
        /// Give up following after this long (e.g. 5m); the drain goes on.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// Manage nodes: `drover node rm NODE` forgets a down node for good.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Set a service's replica count.
    Scale {
        /// Service name.
        service: String,
        /// Number of replicas.
        replicas: u32,
    },
    /// Autoscale a workload horizontally on CPU, as `kubectl autoscale` does: a
    /// HorizontalPodAutoscaler named after it (or --name) keeping the replicas' CPU at
    /// --cpu-percent of their request, between --min and --max replicas.
    Autoscale {
        /// Workload name.
        workload: String,
        /// Most replicas.
        #[arg(long)]
        max: u32,
        /// Fewest replicas.
        #[arg(long, default_value_t = 1)]
        min: u32,
        /// Target CPU utilization, percent of the request (Kubernetes' default: 80).
        #[arg(long, default_value_t = 80)]
        cpu_percent: u32,
        /// The autoscaler's name (default: the workload's).
        #[arg(long)]
        name: Option<String>,
    },
    /// Set traffic weights: between a workload's revisions (`drover weights web 1=90 2=10`)
    /// or between the workloads a service selects (`drover weights front v1=90 v2=10`).
    Weights {
        /// Workload name (with revisions) or service name (with workloads).
        service: String,
        /// REVISION=WEIGHT or WORKLOAD=WEIGHT pairs.
        #[arg(required = true, value_parser = commands::parse_weight)]
        weights: Vec<(String, u32)>,
    },
    /// Check a token against the coordinator and keep it for the next commands
    /// (~/.config/drover/token, 0600).
    Login,
    /// Show the token in use: its name and role.
    Whoami,
    /// Make, list and revoke tokens (admin).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The gossip keyring (admin): list, install, use, remove. Rotate without downtime:
    /// install a new key, use it, then remove the old one.
    Gossip {
        #[command(subcommand)]
        command: GossipCommand,
    },
    /// The cluster CA (admin to change): status, rotate, finish. Rotate without downtime:
    /// `rotate` makes a new CA that signs from then on (nodes renew within seconds), and
    /// `finish` drops the old one once `status` shows no node waiting.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Show cluster events.
    /// Print the output of a service's, a workload's or one allocation's replicas (several
    /// interleaved, each line prefixed with its allocation), read by their agents.
    Logs {
        /// A service, a workload or an allocation id.
        name: String,
        /// Keep following new lines, across restarts of the replicas' containers.
        #[arg(short, long)]
        follow: bool,
        /// Only lines written within this long, e.g. 10s, 5m, 1h.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// Only the last this many lines of each replica (before following).
        #[arg(long)]
        tail: Option<u32>,
        /// Show each line's timestamp.
        #[arg(long)]
        timestamps: bool,
    },
    Events {
        /// Start from this sequence number.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Keep following new events.
        #[arg(short, long)]
        follow: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

/// `drover gossip …`.
#[derive(Debug, Subcommand)]
enum GossipCommand {
    /// Key ids, the one in use first.
    Keys,
    /// Add a key (base64 of 32 bytes; default: make one); every member gets it.
    Install {
        /// The key; default: a new random one.
        key: Option<String>,
    },
    /// Seal with this key (by id) from now on.
    Use {
        /// Key id.
        id: String,
    },
    /// Remove a key (by id); not the one in use.
    Remove {
        /// Key id.
        id: String,
    },
}

/// `drover ca …`.
#[derive(Debug, Subcommand)]
enum CaCommand {
    /// The signing CA, the CAs trusted, and which nodes hold a certificate of which.
    Status,
    /// Start a rotation: a new CA signs from now on; both are trusted until `finish`.
    Rotate,
    /// Trust only the new CA from now on.
    Finish {
        /// Even though some nodes have no certificate of the new CA yet (they must then
        /// join again with a token).
        #[arg(long)]
        force: bool,
    },
}

/// `drover token …`.
#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token; it is printed once and stored only as a hash.
    Create {
        /// A name for it, unique (e.g. ci, alice, edge-agents).
        name: String,
        /// admin (everything), operator (apply, scale, weights, rollouts, drain), read, or
        /// agent (joins nodes).
        #[arg(long, default_value = "operator")]
        role: String,
        /// Lifetime, e.g. 24h or 30d; default: no end.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// Every token: id, name, role, expiry (never the secret).
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Revoke a token by id or name; it stops working at once.
    Revoke {
        /// Id or name.
        #[arg(value_name = "ID|NAME")]
        which: String,
    },
}

/// `drover node …`.
#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Forget a down node for good: its flags and the records of the replicas it held (a
    /// connected node, or one not yet down, is refused).
    #[command(alias = "remove")]
    Rm {
        /// Node id.
        node: String,
    },
}

/// `drover rollout …`.
#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Follow a rollout until it completes (exit 0) or fails (exit 1, naming the cause).
    Status {
        /// Service name.
        service: String,
        /// Follow until it ends; `--watch=false` shows it once.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        watch: bool,
        /// Give up after this long (e.g. 10m).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Output format (json shows it once).
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Every revision kept: what made it, which is current and stable, which failed.
    History {
        /// Service name.
        service: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Roll back to the revision the current rollout replaced, or to --to-revision.
    Undo {
        /// Service name.
        service: String,
        /// Revision to go back to.
        #[arg(long)]
        to_revision: Option<u64>,
    },
    /// Replace nothing more until resumed.
    Pause {
        /// Service name.
        service: String,
    },
    /// Go on with a paused rollout.
    Resume {
        /// Service name.
        service: String,
    },
    /// Replace every replica with a new revision of the same spec, rolled like any other.
    Restart {
        /// Service name.
        service: String,
    },
    /// Skip the remaining canary steps: the rest rolls at maxSurge.
    Promote {
        /// Service name.
        service: String,
    },
    /// Fail the rollout now and go back to the last stable revision.
    Abort {
        /// Service name.
        service: String,
    },
}

/// Objects `drover get` lists.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum GetWhat {
    /// Services: names and ports over the replicas of the workloads they select.
    #[value(alias = "service", alias = "svc")]
    Services,
    /// Workloads: what is placed, scaled and rolled out.
    #[value(
        alias = "workload",
        alias = "deployments",
        alias = "deployment",
        alias = "deploy"
    )]
    Workloads,
    /// Nodes.
    #[value(alias = "node", alias = "no")]
    Nodes,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let target = cli.coordinator;
    // `drover dev` talks to its own coordinator with the admin token it writes.
    if !matches!(cli.command, Command::Dev(_)) {
        client::set_auth(client::resolve_auth(
            cli.token.as_deref(),
            cli.token_file.as_deref(),
            cli.insecure,
        ));
    }
    match cli.command {
        Command::Dev(args) => {
            drover_daemon::init_logs();
            dev::run(args).await
        }
        Command::Apply {
            files,
            dry_run,
            wait,
            timeout,
            cause,
        } => commands::apply(&target, &files, dry_run, &cause, wait.then_some(timeout)).await,
        Command::Rollout { command } => match command {
            RolloutCommand::Status {
                service,
                watch,
                timeout,
                output,
            } => rollout::status(&target, &service, watch, timeout, output).await,
            RolloutCommand::History { service, output } => {
                rollout::history(&target, &service, output).await
            }
            RolloutCommand::Undo {
                service,
                to_revision,
            } => rollout::act(&target, &service, rollout::Action::Undo(to_revision)).await,
            RolloutCommand::Pause { service } => {
                rollout::act(&target, &service, rollout::Action::Pause).await
            }
            RolloutCommand::Resume { service } => {
                rollout::act(&target, &service, rollout::Action::Resume).await
            }
            RolloutCommand::Restart { service } => {
                rollout::act(&target, &service, rollout::Action::Restart).await
            }
            RolloutCommand::Promote { service } => {
                rollout::act(&target, &service, rollout::Action::Promote).await
            }
            RolloutCommand::Abort { service } => {
                rollout::act(&target, &service, rollout::Action::Abort).await
            }
        },
        Command::Delete { service, only } => {
            commands::delete(&target, &service, only.as_deref()).await
        }
        Command::Get {
            what: GetWhat::Services,
            output,
        } => services::services(&target, output).await,
        Command::Get {
            what: GetWhat::Workloads,
            output,
        } => commands::workloads(&target, output).await,
        Command::Get {
            what: GetWhat::Nodes,
            output,
        }
        | Command::Nodes { output } => commands::nodes(&target, output).await,
        Command::Top { name, output } => top::top(&target, name.as_deref(), output).await,
        Command::Status { service, output } => commands::status(&target, &service, output).await,
        Command::Cordon { node } => commands::node_action(&target, &node, "cordon").await,
        Command::Uncordon { node } => commands::node_action(&target, &node, "uncordon").await,
        Command::Drain {
            node,
            detach,
            timeout,
        } => {
            commands::node_action(&target, &node, "drain").await?;
            if detach {
                return Ok(());
            }
            commands::follow_drain(&target, &node, timeout).await
        }
        Command::Node {
            command: NodeCommand::Rm { node },
        } => commands::remove_node(&target, &node).await,
        Command::Scale { service, replicas } => commands::scale(&target, &service, replicas).await,
        Command::Autoscale {
            workload,
            max,
            min,
            cpu_percent,
            name,
        } => {
            let name = name.unwrap_or_else(|| workload.clone());
            commands::autoscale(&target, &workload, &name, min..=max, cpu_percent).await
        }
        Command::Weights { service, weights } => {
            commands::weights(&target, &service, weights).await
        }
        Command::Events {
            since,
            follow,
            output,
        } => commands::events(&target, since, follow, output).await,
        Command::Logs {
            name,
            follow,
            since,
            tail,
            timestamps,
        } => {
            let request = drover_proto::pb::LogsRequest {
                name,
                follow,
                since_seconds: since.map_or(0, |d| d.as_secs().max(1)),
                tail: tail.unwrap_or(0),
            };
            commands::logs(&target, request, timestamps).await
        }
        Command::Gossip { command } => {
            use drover_proto::pb::gossip_key_request::Action;
            let (action, key) = match command {
                GossipCommand::Keys => (Action::List, String::new()),
                GossipCommand::Install { key } => (Action::Install, key.unwrap_or_default()),
                GossipCommand::Use { id } => (Action::Use, id),
                GossipCommand::Remove { id } => (Action::Remove, id),
            };
            tokens::gossip_key(&target, action, key).await
        }
        Command::Ca { command } => {
            use drover_proto::pb::ca_request::Action;
            let (action, force) = match command {
                CaCommand::Status => (Action::Status, false),
                CaCommand::Rotate => (Action::Rotate, false),
                CaCommand::Finish { force } => (Action::Finish, force),
            };
            tokens::ca(&target, action, force).await
        }
        Command::Login => tokens::login(&target).await,
        Command::Whoami => tokens::whoami(&target).await,
        Command::Token { command } => match command {
            TokenCommand::Create { name, role, ttl } => {
                tokens::create(&target, &name, &role, ttl).await
            }
            TokenCommand::List { output } => tokens::list(&target, output).await,
            TokenCommand::Revoke { which } => tokens::revoke(&target, &which).await,
        },
    }
}
