//! `connect-sim`: the 1Password Connect simulator as a process, for demos and benchmarks.
//!
//! ```text
//! connect-sim --seed tests/fixtures/sim/demo.yaml [--listen 127.0.0.1:8080] [--print-url]
//!             [--tls-cert cert.pem --tls-key key.pem]
//! ```
//!
//! Logs go to stderr (`RUST_LOG`, default `info`). With `--print-url` the URL is also printed
//! alone on stdout's first line, for scripts that start it on port 0. The `/__sim/…` admin
//! endpoints are described in the `sim` module's `admin` documentation.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;
use connect_sim::{Access, Seed, Simulator};

#[derive(Parser, Debug)]
#[command(about = "A 1Password Connect simulator serving vaults and items from a seed file")]
struct Args {
    /// YAML or JSON seed: vaults, items and tokens.
    #[arg(long, env = "CONNECT_SIM_SEED")]
    seed: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080", env = "CONNECT_SIM_LISTEN")]
    listen: SocketAddr,
    /// Print the URL alone on stdout once listening.
    #[arg(long)]
    print_url: bool,
    /// PEM certificate chain: serve HTTPS (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let seed = Seed::from_file(&args.seed)?;
    let sim = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Simulator::start_tls_on(
            args.listen,
            seed,
            &std::fs::read(cert)?,
            &std::fs::read(key)?,
        )?,
        _ => Simulator::start_on(args.listen, seed)?,
    };
    let url = sim.url();
    if args.print_url {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{url}")?;
        out.flush()?;
    }
    tracing::info!(%url, seed = %args.seed.display(), "listening; API under {url}/v1");
    for (token, access) in sim.tokens() {
        // A simulator's tokens are made up; printing them is the point of a demo.
        let vaults = match access {
            Access::All => "every vault".to_string(),
            Access::Vaults(ids) => sim
                .vaults()
                .into_iter()
                .filter(|v| ids.contains(&v.id))
                .map(|v| format!("{} ({})", v.name, v.id))
                .collect::<Vec<_>>()
                .join(", "),
        };
        tracing::info!(token = %token, vaults = %vaults, "token");
    }
    for vault in sim.vaults() {
        tracing::info!(vault = %vault.name, id = %vault.id, items = vault.items, "vault");
    }

    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(stop_signal())?;
    tracing::info!("stopping");
    sim.shutdown();
    Ok(())
}

async fn stop_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
