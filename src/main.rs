//! The command line. Errors go to stderr as one line each; exit codes: 0 ok,
//! 1 bad input or configuration, 2 runtime failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// jemalloc instead of the system allocator: a proxied request makes dozens
/// of small short-lived allocations on several threads, where glibc's malloc
/// spends a tenth of the sidecar's CPU (BENCHMARKS.md). mimalloc was as fast
/// but doubled the idle RSS.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use wedsync_sidecar::cli::dlq::DlqCommand;
use wedsync_sidecar::cli::CommandError;
use wedsync_sidecar::config::{self, Config};
use wedsync_sidecar::runtime::logging::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "wedsync-sidecar",
    version,
    about = "Egress gateway, webhook ingress and delivery sidecar"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (default: conf/sidecar.yaml).
    #[arg(
        short,
        long,
        global = true,
        env = "SIDECAR_CONFIG",
        default_value = "conf/sidecar.yaml"
    )]
    config: PathBuf,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar (the default).
    Run {
        /// Once ready, write the listeners' bound addresses here as JSON,
        /// `{"egress": "IP:port", "ingress": "IP:port", "admin": "IP:port"}`
        /// (useful with port 0).
        #[arg(long, value_name = "PATH")]
        ready_file: Option<PathBuf>,
    },
    /// Validate the configuration: list every error and exit 1, or summarize it and exit 0.
    Check,
    /// Print the headers (and for Twilio the URL) that make the body on stdin a
    /// valid request for a webhook, signed now with its first secret.
    Sign {
        /// The webhook's name under `webhooks`.
        #[arg(long)]
        webhook: String,
    },
    /// Add the sidecar to Kubernetes workloads read from FILE or stdin; write them to stdout.
    Inject {
        /// The manifests (default: standard input).
        file: Option<PathBuf>,
        /// The sidecar's image (default: wedsync-sidecar:VERSION, this binary's version).
        #[arg(long)]
        image: Option<String>,
        /// The ConfigMap holding sidecar.yaml.
        #[arg(long, default_value = "wedsync-sidecar")]
        config_map: String,
        /// The Secret holding the credentials the config reads with ${file:...}.
        #[arg(long, default_value = "wedsync-sidecar")]
        secret: String,
    },
    /// Publish the JSON event on stdin to `events.<NAME>` of the running
    /// sidecar (its egress listener), as the app would; prints the answer.
    Publish {
        /// The event source's name under `events`.
        name: String,
        /// The event's id when the body carries none (sent as Idempotency-Key).
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
    /// Print the config's JSON Schema (draft 2020-12), for editors and CI.
    Schema,
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `wedsync-sidecar man | man -l -`.
    Man,
    /// Dead letters of the running sidecar, through its admin listener.
    Dlq {
        #[command(subcommand)]
        command: Dlq,
    },
    /// The event log of the running sidecar, through its admin listener.
    Events {
        #[command(subcommand)]
        command: Events,
    },
    /// Run a webhook's gap repair (`recover`) now, through the running
    /// sidecar's admin listener, and print what it found.
    Recover {
        /// The webhook's name under `webhooks`.
        webhook: String,
        /// Look this far back instead of from the checkpoint (e.g. 6h),
        /// within the webhook's lookback.
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        /// List and count only: nothing stored, the checkpoint unchanged.
        #[arg(long)]
        dry_run: bool,
    },
}

/// What `events list` and `events redeliver` filter by.
#[derive(clap::Args)]
struct EventFilters {
    /// The webhook (or event source) that received it.
    #[arg(long)]
    source: Option<String>,
    /// An event type, or a `prefix.*` glob.
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    /// pending, delivered, dead or partial (with --target: that target's).
    #[arg(long)]
    status: Option<String>,
    #[arg(long)]
    target: Option<String>,
    /// A context field's value, FIELD=VALUE (repeatable).
    #[arg(long, value_name = "FIELD=VALUE", value_parser = wedsync_sidecar::cli::events::parse_context)]
    context: Vec<(String, String)>,
    /// Received at or after: RFC 3339, or a duration back from now (2h).
    #[arg(long)]
    since: Option<String>,
    /// Received at or before: RFC 3339, or a duration back from now.
    #[arg(long)]
    until: Option<String>,
}

impl From<EventFilters> for wedsync_sidecar::cli::events::Filters {
    fn from(f: EventFilters) -> Self {
        Self {
            source: f.source,
            event_type: f.event_type,
            status: f.status,
            target: f.target,
            context: f.context,
            since: f.since,
            until: f.until,
        }
    }
}

#[derive(Subcommand)]
enum Events {
    /// List events, newest first.
    List {
        #[command(flatten)]
        filters: EventFilters,
        /// Rows per page (1 to 500, default 50).
        #[arg(long)]
        limit: Option<usize>,
        /// Continue after a previous page (its `more:` line, or `next` in JSON).
        #[arg(long)]
        cursor: Option<String>,
        /// Output format: a table, or the admin API's JSON page.
        #[arg(short, long, value_enum, default_value = "table")]
        output: ListFormat,
    },
    /// Show one event: headers, body, and every attempt per target.
    Show { source: String, id: String },
    /// Queue one event again (SOURCE ID), or with --all every event the filters match.
    Redeliver {
        /// The webhook that received it; omit with --all.
        #[arg(
            value_name = "SOURCE",
            required_unless_present = "all",
            conflicts_with = "all",
            requires = "id"
        )]
        event_source: Option<String>,
        /// The event's id.
        id: Option<String>,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filters: EventFilters,
        /// With --all: refuse when more than this many match (default 10000).
        #[arg(long, requires = "all")]
        max: Option<u64>,
        /// With --all: only count what matches.
        #[arg(long, requires = "all")]
        dry_run: bool,
    },
}

impl From<Events> for wedsync_sidecar::cli::events::EventsCommand {
    fn from(command: Events) -> Self {
        match command {
            Events::List {
                filters,
                limit,
                cursor,
                output,
            } => Self::List {
                filters: filters.into(),
                limit,
                cursor,
                json: matches!(output, ListFormat::Json),
            },
            Events::Show { source, id } => Self::Show { source, id },
            Events::Redeliver {
                event_source: Some(source),
                id: Some(id),
                all: false,
                filters,
                ..
            } => Self::Redeliver {
                source,
                id,
                target: filters.target,
            },
            Events::Redeliver {
                filters,
                max,
                dry_run,
                ..
            } => Self::RedeliverMatching {
                filters: filters.into(),
                max,
                dry_run,
            },
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ListFormat {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Dlq {
    /// List dead letters, newest first.
    List {
        #[arg(long)]
        webhook: Option<String>,
        #[arg(long)]
        target: Option<String>,
        /// Rows per page (1 to 500, default 50).
        #[arg(long)]
        limit: Option<usize>,
        /// Continue after a previous page (its `more:` line, or `next` in JSON).
        #[arg(long)]
        cursor: Option<String>,
        /// Output format: a table, or the admin API's JSON page.
        #[arg(short, long, value_enum, default_value = "table")]
        output: ListFormat,
    },
    /// Show one dead letter with every attempt.
    Show { id: String },
    /// Put one dead letter (or, with --all, every one that matches) back on the queue.
    Replay {
        /// The dead letter's id; omit with --all.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long, requires = "all")]
        webhook: Option<String>,
        #[arg(long, requires = "all")]
        target: Option<String>,
    },
    /// Delete one dead letter.
    Purge { id: String },
}

impl From<Dlq> for DlqCommand {
    fn from(command: Dlq) -> Self {
        match command {
            Dlq::List {
                webhook,
                target,
                limit,
                cursor,
                output,
            } => Self::List {
                webhook,
                target,
                limit,
                cursor,
                json: matches!(output, ListFormat::Json),
            },
            Dlq::Show { id } => Self::Show { id },
            Dlq::Replay {
                id: Some(id),
                all: false,
                ..
            } => Self::Replay { id },
            Dlq::Replay {
                webhook, target, ..
            } => Self::ReplayAll { webhook, target },
            Dlq::Purge { id } => Self::Purge { id },
        }
    }
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    // Whether -c or $SIDECAR_CONFIG named a file (inject reads one only then).
    let config_named =
        matches.value_source("config") != Some(clap::parser::ValueSource::DefaultValue);
    let path = cli.config.clone();
    match cli.command.unwrap_or(Command::Run { ready_file: None }) {
        Command::Check => match Config::load(&path) {
            Ok(config) => match wedsync_sidecar::runtime::server::build_check(&config) {
                Ok(()) => {
                    print_out(&format!(
                        "{}: OK\n{}",
                        path.display(),
                        config::summary(&config)
                    ));
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("{}: {error}", path.display());
                    ExitCode::from(1)
                }
            },
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(1)
            }
        },
        Command::Sign { webhook } => sign(&path, &webhook),
        Command::Dlq { command } => dlq(&path, command.into()),
        Command::Events { command } => events(&path, command.into()),
        Command::Recover {
            webhook,
            since,
            dry_run,
        } => recover(
            &path,
            wedsync_sidecar::cli::recover::RecoverCommand {
                webhook,
                since,
                dry_run,
            },
        ),
        Command::Publish {
            name,
            idempotency_key,
        } => publish(&path, &name, idempotency_key.as_deref()),
        Command::Inject {
            file,
            image,
            config_map,
            secret,
        } => inject(config_named, &path, file, image, config_map, secret),
        Command::Schema => {
            print_out(wedsync_sidecar::config::SCHEMA.trim_end());
            ExitCode::SUCCESS
        }
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(
                shell,
                &mut command,
                "wedsync-sidecar",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Man => match man_page(&mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            // `man | head`: the reader has what it wanted.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("wedsync-sidecar: man: {error}");
                ExitCode::from(2)
            }
        },
        Command::Run { ready_file } => {
            let config = match load_config(&path) {
                Ok(config) => config,
                Err(code) => return code,
            };
            logging::init(cli.log_format);
            tracing::info!(config = %path.display(), version = env!("CARGO_PKG_VERSION"), "starting wedsync-sidecar");
            match wedsync_sidecar::runtime::server::run(config, path, ready_file) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("wedsync-sidecar: {error}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn sign(path: &std::path::Path, name: &str) -> ExitCode {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let body = match read_stdin("the body") {
        Ok(body) => body,
        Err(code) => return code,
    };
    let now = wedsync_sidecar::time::unix_time().as_secs();
    match wedsync_sidecar::cli::sign::sign(&config, name, &body, now) {
        Ok(lines) => {
            print_out(&lines);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("wedsync-sidecar: {} ({})", error, path.display());
            ExitCode::from(1)
        }
    }
}

fn inject(
    config_given: bool,
    path: &std::path::Path,
    file: Option<PathBuf>,
    image: Option<String>,
    config_map: String,
    secret: String,
) -> ExitCode {
    // The config (for its ports) is optional unless named: the default
    // path is often not where manifests are edited.
    let listeners = if config_given || path.exists() {
        let listeners = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|text| {
                wedsync_sidecar::config::Listen::from_yaml(&text, &path.display().to_string())
                    .map_err(|e| e.to_string())
            });
        match listeners {
            Ok(listeners) => listeners,
            Err(error) => {
                eprintln!("wedsync-sidecar: {error}");
                return ExitCode::from(1);
            }
        }
    } else {
        wedsync_sidecar::config::Listen::default()
    };
    if listeners.admin.ip().is_loopback() {
        eprintln!(
            "wedsync-sidecar: warning: listen.admin is {}; kubelet probes and Prometheus reach the pod IP, so bind it on 0.0.0.0 in the ConfigMap's config",
            listeners.admin
        );
    }
    let input = match &file {
        Some(file) => std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display())),
        None => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map(|_| text)
                .map_err(|e| format!("cannot read standard input: {e}"))
        }
    };
    let input = match input {
        Ok(input) => input,
        Err(error) => {
            eprintln!("wedsync-sidecar: {error}");
            return ExitCode::from(1);
        }
    };
    let mut options = wedsync_sidecar::cli::inject::Options::new(&listeners);
    if let Some(image) = image {
        options.image = image;
    }
    options.config_map = config_map;
    options.secret = secret;
    match wedsync_sidecar::cli::inject::inject(&input, &options) {
        Ok(output) => {
            use std::io::Write;
            let _ = std::io::stdout().lock().write_all(output.as_bytes());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("wedsync-sidecar: inject: {error}");
            ExitCode::from(1)
        }
    }
}

fn publish(path: &std::path::Path, name: &str, idempotency_key: Option<&str>) -> ExitCode {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let body = match read_stdin("the event") {
        Ok(body) => body,
        Err(code) => return code,
    };
    talk(
        "publish: ",
        wedsync_sidecar::cli::publish::publish(&config, name, body, idempotency_key),
    )
}

fn dlq(path: &std::path::Path, command: DlqCommand) -> ExitCode {
    match load_config(path) {
        Ok(config) => talk("", wedsync_sidecar::cli::dlq::run(&config, &command)),
        Err(code) => code,
    }
}

fn events(
    path: &std::path::Path,
    command: wedsync_sidecar::cli::events::EventsCommand,
) -> ExitCode {
    match load_config(path) {
        Ok(config) => talk("", wedsync_sidecar::cli::events::run(&config, &command)),
        Err(code) => code,
    }
}

fn recover(
    path: &std::path::Path,
    command: wedsync_sidecar::cli::recover::RecoverCommand,
) -> ExitCode {
    match load_config(path) {
        Ok(config) => talk("", wedsync_sidecar::cli::recover::run(&config, &command)),
        Err(code) => code,
    }
}

/// The config at `path`, or every error in it printed (exit 1).
fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(1)
    })
}

/// Standard input whole (`what` names it in the error), or exit 1.
fn read_stdin(what: &str) -> Result<Vec<u8>, ExitCode> {
    let mut body = Vec::new();
    match std::io::Read::read_to_end(&mut std::io::stdin(), &mut body) {
        Ok(_) => Ok(body),
        Err(error) => {
            eprintln!("wedsync-sidecar: cannot read {what} from stdin: {error}");
            Err(ExitCode::from(1))
        }
    }
}

/// Runs a command that talks to the running sidecar and prints its answer
/// (or its error, `context` first, with the error's exit code).
fn talk(
    context: &str,
    command: impl std::future::Future<Output = Result<String, CommandError>>,
) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a single-threaded runtime starts");
    match runtime.block_on(command) {
        Ok(text) => {
            print_out(&text);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("wedsync-sidecar: {context}{}", error.message);
            ExitCode::from(error.exit_code)
        }
    }
}

/// Writes a line to stdout; a reader that went away (`| head`) is not an error.
/// One page with every command in it (`wedsync-sidecar run`, `dlq
/// list` ...), instead of clap_mangen's list of `wedsync-sidecar-run(1)`
/// pages, which nothing installs.
fn man_page(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let command = Cli::command();
    let page = clap_mangen::Man::new(command.clone());
    page.render_title(out)?;
    page.render_name_section(out)?;
    page.render_synopsis_section(out)?;
    page.render_description_section(out)?;
    page.render_options_section(out)?;
    writeln!(out, ".SH COMMANDS")?;
    man_commands(out, &command, "wedsync-sidecar")?;
    page.render_version_section(out)
}

/// Each subcommand of `command` as a subsection: its synopsis, what it
/// does and its options, then its own subcommands.
fn man_commands(
    out: &mut dyn std::io::Write,
    command: &clap::Command,
    prefix: &str,
) -> std::io::Result<()> {
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("{prefix} {}", sub.get_name());
        // clap takes a name as a `&'static str` (without its `string`
        // feature); a page is printed once, then the process ends.
        let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
        let named = sub.clone().name(leaked).bin_name(leaked);
        let page = clap_mangen::Man::new(named.clone());
        let mut text = Vec::new();
        page.render_synopsis_section(&mut text)?;
        page.render_description_section(&mut text)?;
        if named.get_arguments().any(|a| !a.is_hide_set()) {
            page.render_options_section(&mut text)?;
        }
        writeln!(out, ".SS \"{}\"", name.replace('-', "\\-"))?;
        // Its sections become bold headings inside the subsection.
        for line in String::from_utf8_lossy(&text).lines() {
            match line.strip_prefix(".SH ") {
                Some("SYNOPSIS" | "DESCRIPTION") => writeln!(out, ".PP")?,
                Some(heading) => writeln!(out, ".PP\n.B {heading}\n.br")?,
                None => writeln!(out, "{line}")?,
            }
        }
        man_commands(out, sub, &name)?;
    }
    Ok(())
}

fn print_out(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap checks its definition only when a subcommand is parsed: two
    /// arguments of one name would panic in the operator's shell.
    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
