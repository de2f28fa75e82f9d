//! retweeter-app: watch tweets, store who retweeted them with one
//! `bulk_create_new` call per poll, and report a retweeter-by-author table.
//!
//! Run `retweeter-app --help` (or `retweeter-app demo`).

mod cli;
mod db;
mod demo;
mod embedded;
mod fake_api;
mod http;
mod migrations;
mod model;
mod poll;
mod report;
mod sim;
mod source;
mod ui;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    ui::init_logging(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            ui::print_error(&err);
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Migrate(args) => db::migrate_command(&args).await,
            Command::Migrations(args) => migrations::write(&args).map(|()| ExitCode::SUCCESS),
            Command::Poll(args) => poll::poll_command(&args).await,
            Command::Watch(args) => poll::watch_command(&args).await,
            Command::Report(args) => report::command(&args).await,
            Command::Demo(args) => demo::run(&args).await,
            // A blocking server with its own threads; it never returns to the runtime.
            Command::FakeApi(args) => fake_api::run(&args).map(|()| ExitCode::SUCCESS),
        }
    })
}
