//! The command line (SPEC §9): `serve` (the default), `check`, `config check`,
//! `blocks render`, `manifest`, `keys new`, `replay` (the policy over stored incidents, read
//! only), and `demo`, a client of a running server.
//!
//! In: arguments and the environment. Out: an exit code. Configuration errors are printed as
//! one line on standard error and exit with status 2; nothing starts.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::Application;
use crate::config::{self, Settings, Sources};
use crate::domain::Role;
use crate::web::auth;

/// Sentinel watches your hosts, containers and Prometheus, opens an incident when a signal
/// breaches its threshold, proposes a fix, runs it when the risk is low or asks in Slack when
/// it is not, verifies it, and keeps an audit trail.
///
/// Run with no command to start the server on the built-in defaults (127.0.0.1:3000, an
/// embedded store under ./data/sentinel).
#[derive(Debug, Parser)]
#[command(name = "sentinel", version, about, long_about)]
pub struct Cli {
    /// Configuration file; it names only what it changes from the defaults
    /// (see config/sentinel.toml).
    #[arg(
        long,
        short,
        global = true,
        env = "SENTINEL_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: Slack endpoints, HTTP API, status page and the monitor loop
    /// (the default).
    Serve,
    /// Run one monitoring cycle and print what it saw; changes nothing.
    Check {
        /// Print the signals as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Work with the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Work with the Block Kit templates in blocks/.
    Blocks {
        #[command(subcommand)]
        command: BlocksCommand,
    },
    /// Print the Slack app manifest (manifests/slack-app.yaml) with PUBLIC_URL filled in.
    Manifest {
        /// The Socket Mode variant: no public URL needed; events arrive over a WebSocket
        /// opened with SLACK_APP_TOKEN.
        #[arg(long)]
        socket_mode: bool,
    },
    /// Print what the policy would decide, under this configuration, for each incident stored
    /// in the last `--since` (the store REDIS_URL or SENTINEL_DATA_DIR names), next to what
    /// it decided then; and a total. Reads only: writes nothing, takes no lease, audits
    /// nothing. A running server's embedded store is locked: point SENTINEL_DATA_DIR at a
    /// copy, or use Redis.
    Replay {
        /// How far back to look, like `7d`, `24h` or `30m`.
        #[arg(long, default_value = "7d", value_parser = parse_since)]
        since: humantime::Duration,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Ask the running server to stage a real, harmless problem and watch it handle it:
    /// `sandbox` (120 MB of demo logs: cleaned up on its own), `container` (a stopped
    /// container: its start waits for approval), `memory` (a container at 75 % of its memory
    /// limit: its fix waits for approval), or `reset` (removes them and resolves their
    /// incidents). Needs an admin API key.
    Demo {
        /// sandbox, container, memory or reset.
        #[arg(value_parser = parse_demo)]
        scenario: crate::service::demo::DemoScenario,
        /// The server's address. Default: http:// and the configured `listen` address.
        #[arg(long, env = "SENTINEL_URL", value_name = "URL")]
        server: Option<String>,
        /// A file whose first line is the admin API key (as `sentinel keys new` prints it).
        #[arg(long, value_name = "FILE", conflicts_with = "api_key")]
        key_file: Option<PathBuf>,
        /// The admin API key itself; prefer the environment to the command line.
        #[arg(long, env = "SENTINEL_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Load and validate the configuration (defaults, file, environment) and say what it
    /// amounts to; exits non-zero with the key and the problem when it is invalid.
    Check,
}

#[derive(Debug, Subcommand)]
enum BlocksCommand {
    /// Render a template with sample data as Block Kit JSON.
    Render {
        /// The template's name, e.g. `incident_card`.
        template: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create an API key: prints the key (shown only this once) and the TOML to add to the
    /// configuration, which stores only its SHA-256.
    New {
        /// viewer (read), operator (approve medium risk) or admin (everything).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// A name that says who uses the key; it appears in the audit trail.
        #[arg(long)]
        name: Option<String>,
    },
}

fn parse_demo(text: &str) -> Result<crate::service::demo::DemoScenario, String> {
    text.parse()
        .map_err(|e: crate::service::demo::UnknownDemoScenario| e.to_string())
}

fn parse_since(text: &str) -> Result<humantime::Duration, String> {
    text.trim()
        .parse::<humantime::Duration>()
        .map_err(|_| format!("{text:?} is not a duration; write it like \"7d\" or \"24h\""))
}

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse()
        .map_err(|e: crate::domain::UnknownRole| e.to_string())
}

/// Runs the command line and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let Some(settings) = load(cli.config.as_deref()) else {
                return ExitCode::from(2);
            };
            serve(settings)
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            let Some(settings) = load(cli.config.as_deref()) else {
                return ExitCode::from(2);
            };
            // Every Block Kit template must render within Slack's limits: its sample, and
            // every incident template for every (action, status) pair and execution state.
            let names = crate::slack::blocks::template_names();
            let sweep = match crate::slack::blocks::render_every_sample() {
                Ok(sweep) => sweep,
                Err(e) => {
                    eprintln!("sentinel: {e}");
                    return ExitCode::from(2);
                }
            };
            println!("configuration is valid");
            for (key, value) in settings.summary() {
                println!("  {key:<22} {value}");
            }
            println!(
                "  {:<22} {} render within Slack's limits ({} sample incidents: every action \
                 and status, {} renders)",
                "block kit templates",
                names.len(),
                sweep.incidents,
                sweep.renders
            );
            ExitCode::SUCCESS
        }
        Command::Keys {
            command: KeysCommand::New { role, name },
        } => keys_new(role, name),
        Command::Replay { since } => {
            let Some(settings) = load(cli.config.as_deref()) else {
                return ExitCode::from(2);
            };
            replay(&settings, *since)
        }
        Command::Demo {
            scenario,
            server,
            key_file,
            api_key,
        } => {
            let Some(settings) = load(cli.config.as_deref()) else {
                return ExitCode::from(2);
            };
            let server = server.unwrap_or_else(|| format!("http://{}", settings.listen));
            demo(scenario, &server, key_file.as_deref(), api_key)
        }
        Command::Check { json } => {
            let Some(settings) = load(cli.config.as_deref()) else {
                return ExitCode::from(2);
            };
            check(settings, json)
        }
        Command::Blocks {
            command: BlocksCommand::Render { template },
        } => blocks_render(&template),
        Command::Manifest { socket_mode } => {
            let Some(settings) = load(cli.config.as_deref()) else {
                return ExitCode::from(2);
            };
            match manifest(&settings.public_url, socket_mode) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sentinel: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn load(file: Option<&std::path::Path>) -> Option<Settings> {
    match Settings::load(&Sources {
        file,
        env: &config::process_env,
    }) {
        Ok(settings) => Some(settings),
        Err(e) => {
            eprintln!("sentinel: {e}");
            None
        }
    }
}

fn serve(settings: Settings) -> ExitCode {
    let _telemetry = crate::telemetry::init(&settings.telemetry);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sentinel: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let app = Application::build(settings).await?;
        crate::shutdown::on_signal(app.shutdown_token());
        app.run().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sentinel: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `sentinel demo <scenario>`: `POST /api/scenarios/{scenario}` on the running server with
/// an admin key; prints what the server says it did.
fn demo(
    scenario: crate::service::demo::DemoScenario,
    server: &str,
    key_file: Option<&std::path::Path>,
    api_key: Option<String>,
) -> ExitCode {
    let key = match (key_file, api_key) {
        (Some(file), _) => match std::fs::read_to_string(file) {
            Ok(text) => text.lines().next().unwrap_or_default().trim().to_owned(),
            Err(e) => {
                eprintln!("sentinel: cannot read the key file {}: {e}", file.display());
                return ExitCode::from(2);
            }
        },
        (None, Some(key)) => key.trim().to_owned(),
        (None, None) => String::new(),
    };
    if key.is_empty() {
        eprintln!(
            "sentinel: demo needs an admin API key: --key-file FILE or SENTINEL_API_KEY \
             (create one with `sentinel keys new --role admin`)"
        );
        return ExitCode::from(2);
    }
    let url = format!("{}/api/scenarios/{scenario}", server.trim_end_matches('/'));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sentinel: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let answer = runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(&url)
            .header("x-api-key", key)
            .timeout(std::time::Duration::from_secs(600))
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        Ok::<_, reqwest::Error>((status, body))
    });
    match answer {
        Ok((status, body)) if status.is_success() => {
            println!(
                "{}",
                body["message"]
                    .as_str()
                    .unwrap_or("done, but the server said nothing")
            );
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            let why = body["error"].as_str().unwrap_or("no reason given");
            eprintln!("sentinel: the server refused the {scenario} demo ({status}): {why}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!(
                "sentinel: cannot reach Sentinel at {server} (is `sentinel` running? --server \
                 or SENTINEL_URL names another address): {e}"
            );
            ExitCode::FAILURE
        }
    }
}

/// One monitoring cycle, printed; writes nothing anywhere.
fn check(settings: Settings, json: bool) -> ExitCode {
    let _telemetry = crate::telemetry::init(&settings.telemetry);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sentinel: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = std::time::Instant::now();
    let collected = runtime.block_on(async {
        crate::pipeline::monitor::Collectors::new(std::sync::Arc::new(settings))
            .collect()
            .await
    });
    let elapsed = crate::pipeline::monitor::elapsed_ms(started);
    if json {
        match serde_json::to_string_pretty(&collected.readings) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("sentinel: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<18} {:<28} {:>10} {:>10}  {:<12} SOURCE",
        "SIGNAL", "RESOURCE", "VALUE", "THRESHOLD", "STATE"
    );
    let number = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    for reading in &collected.readings {
        let mut resource = reading.resource.clone();
        if resource.chars().count() > 28 {
            resource = resource.chars().take(27).collect::<String>() + "…";
        }
        println!(
            "{:<18} {:<28} {:>10} {:>10}  {:<12} {}",
            reading.signal,
            resource,
            number(reading.value),
            number(reading.threshold),
            reading.state,
            reading.source
        );
    }
    for (signal, why) in &collected.unavailable {
        println!("unavailable: {signal}: {why}");
    }
    println!("cycle took {elapsed:.0} ms; nothing was changed");
    ExitCode::SUCCESS
}

/// `sentinel replay`: one line per stored incident and a total (`crate::replay`).
fn replay(settings: &Settings, since: std::time::Duration) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sentinel: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let history = match runtime.block_on(crate::replay::load(settings)) {
        Ok(history) => history,
        Err(e) => {
            eprintln!("sentinel: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let now = crate::domain::Timestamp::now();
    let from = crate::domain::Timestamp::from_unix_millis(
        now.unix_millis()
            .saturating_sub(i64::try_from(since.as_millis()).unwrap_or(i64::MAX)),
    );
    let report = crate::replay::replay(&history, settings, from);
    println!(
        "replaying incidents opened since {from} under mode {} (budget {} per hour); nothing \
         is changed",
        report.mode, settings.actions.auto_budget_per_hour
    );
    for line in &report.lines {
        println!("{}", line.to_text());
    }
    println!("{}", report.total());
    ExitCode::SUCCESS
}

fn keys_new(role: Role, name: Option<String>) -> ExitCode {
    let name = name.unwrap_or_else(|| format!("{role}-key"));
    if name.trim().is_empty() || name.chars().any(char::is_control) {
        eprintln!("sentinel: --name must be non-empty text without control characters");
        return ExitCode::from(2);
    }
    let (_, text) = auth::new_key_output(role, &name);
    print!("{text}");
    ExitCode::SUCCESS
}

/// Prints a template rendered with its sample data: `{"text", "blocks"}` for a message,
/// `{"text", "view"}` for a modal, as JSON Block Kit Builder accepts.
fn blocks_render(template: &str) -> ExitCode {
    use crate::slack::blocks;
    if !blocks::template_names().contains(&template) {
        eprintln!(
            "sentinel: no template named {template:?}; the templates are: {}",
            blocks::template_names().join(", ")
        );
        return ExitCode::from(2);
    }
    let rendered = match blocks::render(template, &blocks::sample_context(template)) {
        Ok(rendered) => rendered,
        Err(e) => {
            eprintln!("sentinel: {e}");
            return ExitCode::FAILURE;
        }
    };
    let document = if blocks::is_modal(template) {
        serde_json::json!({ "text": rendered.text, "view": rendered.blocks[0] })
    } else {
        serde_json::json!({ "text": rendered.text, "blocks": rendered.blocks })
    };
    match serde_json::to_string_pretty(&document) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sentinel: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The Slack app manifest, compiled in from manifests/slack-app.yaml.
const MANIFEST: &str = include_str!("../manifests/slack-app.yaml");

/// The manifest with `PUBLIC_URL` filled in, or its Socket Mode variant (no URLs).
pub fn manifest(public_url: &str, socket_mode: bool) -> Result<String, String> {
    if socket_mode {
        let text = MANIFEST
            .lines()
            .filter(|line| !line.contains("PUBLIC_URL/"))
            .map(|line| {
                if line.trim_start().starts_with("socket_mode_enabled:") {
                    line.replace("false", "true")
                } else {
                    line.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        return Ok(text + "\n");
    }
    let base = public_url.trim_end_matches('/');
    if base.is_empty() {
        return Err(
            "set PUBLIC_URL to the address Slack can reach (or use --socket-mode)".to_owned(),
        );
    }
    Ok(MANIFEST.replace("PUBLIC_URL/", &format!("{base}/")))
}
