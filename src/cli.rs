//! The command line (SPEC §9): `serve` (the default), `check`, `config check`,
//! `blocks render`, `manifest`, `keys new`.
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
    /// Print the Slack app manifest with PUBLIC_URL filled in.
    Manifest,
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
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
            println!("configuration is valid");
            for (key, value) in settings.summary() {
                println!("  {key:<22} {value}");
            }
            ExitCode::SUCCESS
        }
        Command::Keys {
            command: KeysCommand::New { role, name },
        } => keys_new(role, name),
        Command::Check { json } => {
            let Some(settings) = load(cli.config.as_deref()) else {
                return ExitCode::from(2);
            };
            check(settings, json)
        }
        Command::Blocks {
            command: BlocksCommand::Render { .. },
        } => not_yet("sentinel blocks render", "the Slack"),
        Command::Manifest => not_yet("sentinel manifest", "the Slack"),
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
    crate::telemetry::init(settings.telemetry.log_format);
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

/// One monitoring cycle, printed; writes nothing anywhere.
fn check(settings: Settings, json: bool) -> ExitCode {
    crate::telemetry::init(settings.telemetry.log_format);
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

fn not_yet(command: &str, work: &str) -> ExitCode {
    eprintln!("{command}: not available yet (it arrives with {work} work)");
    ExitCode::from(3)
}
