//! The `swe-env` binary: parse arguments, set up logging, run, map the outcome to an exit code. Nothing else.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    quiet_on_closed_output();
    let cli = swe_env::cli::Cli::parse();
    swe_env::cli::init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(swe_env::cli::EXIT_INFRA);
        }
    };
    match swe_env::cli::block_on_run(&runtime, cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// When the reader of our output goes away (`swe-env gc --json | head -1`), `println!` panics with a broken pipe.
/// Stop quietly instead, with the status a shell reports for a process ended by SIGPIPE (128 + 13), as command-line
/// tools do. Every other panic keeps the default report.
fn quiet_on_closed_output() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = swe_env::panic_message(info.payload());
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            std::process::exit(i32::from(swe_env::cli::EXIT_OUTPUT_CLOSED));
        }
        default_hook(info);
    }));
}
