//! The persistent-shell protocol: how a command is framed for `bash` reading its stdin, and how the sentinel that
//! ends it is built and parsed. Pure functions; the I/O lives in [`crate::docker`].
//!
//! The shell is `bash -i` without a terminal, so an interrupt behaves like Ctrl-C at a prompt (the rest of the
//! command line is dropped, state is kept). Like a terminal, it announces background jobs (`[1] 42`) and says
//! `exit` when it exits; prompts are empty.
//!
//! The agent's code runs in this same shell, so it can redefine anything the frame uses: functions or aliases named
//! `eval`, `printf`, `builtin`, `{`, `if`…, disabled builtins (`enable -n`), `set -x`/`-v`/`-e`/`-t`, `extdebug`,
//! DEBUG traps, `PROMPT_COMMAND`, `PS0`/`PS1`/`PS2`/`PS4`, `IFS`, posix mode. Each command is therefore sent as:
//!
//! 1. a **guard** line that no alias or function can intercept: it uses no reserved word and quotes every command
//!    name (`\builtin`), so aliases never apply; it first enters posix mode by a plain assignment
//!    (`POSIXLY_CORRECT=y`), where the special builtin `unset` is found before any function, removes functions
//!    named `builtin` or `enable` (the only two names the frame cannot bypass), re-enables the builtins the frame
//!    calls, clears what would act on the frame (DEBUG trap, `-x -v -e -t`, `extdebug`, prompt hooks), turns
//!    alias expansion off so that the next line parses plainly, puts the agent's posix mode back, and prints a
//!    per-command START marker. Anything before START (output of a background job between commands, hooks) is
//!    not this command's output and is dropped;
//! 2. a **run** line, parsed with aliases off: it restores the agent's alias expansion, runs the command with
//!    `\builtin eval $'…' </dev/null 2>&1` (`eval` keeps state such as `cd`/`export`/functions in the shell and
//!    turns syntax errors into a status; `</dev/null` keeps commands from eating the protocol stream), then, in a
//!    group whose stdout/stderr go to `/dev/null` (so traces and traps of the frame itself print nothing), guards
//!    again and prints the DONE marker, `$?` and `$PWD` terminated by a NUL byte (no path contains NUL, so any
//!    directory name — newline, tab, quotes, invalid UTF-8 — is reported exactly).
//!
//! The agent's functions (even `eval`, `printf`, `cd`), aliases, variables, traps other than DEBUG, and options
//! other than `-x -v -e -t` and `extdebug` persist between commands. Markers are printed from pieces so that the
//! frame's own text (seen through `set -v`, or `/proc`) never contains them whole.

use rand::Rng;

/// Prefix of every sentinel marker.
const MARKER_PREFIX: &str = "__SWE_ENV_";

/// A unique DONE marker for one command.
pub fn new_marker() -> String {
    let nonce: u64 = rand::rng().random();
    format!("{MARKER_PREFIX}DONE_{nonce:016x}__")
}

/// The START marker that goes with a DONE marker from [`new_marker`]: printed once the guard ran, just before
/// the command.
pub fn start_marker(marker: &str) -> String {
    format!("{marker}START__")
}

/// The byte that ends a sentinel trailer (`CODE:PWD`). A path cannot contain it.
pub const TRAILER_END: u8 = 0;

/// Restores what the frame needs, whatever the agent defined: enters posix mode by assignment (special builtins
/// such as `unset` win over functions there), removes functions named `builtin`/`enable`, re-enables the builtins
/// used, clears what acts on every simple command, and saves the agent's `$SHELLOPTS`/`$BASHOPTS` first.
/// Uses no reserved word and only quoted command names, so aliases never apply.
const GUARD: &str = "__swe_env_so=$SHELLOPTS __swe_env_bo=$BASHOPTS POSIXLY_CORRECT=y; \\unset -f builtin enable; \\enable builtin enable; \\builtin unset -f builtin enable; \\builtin enable eval printf set shopt trap unset; \\builtin trap - DEBUG; \\builtin set +xvet +o history; \\builtin shopt -u extdebug expand_aliases; PS0= PS1= PS2= PS4='+ ' PROMPT_COMMAND=";

/// Puts the agent's posix mode back (needs a line parsed with aliases off: it uses `[[`/`{`).
const RESTORE_POSIX: &str = "[[ :$__swe_env_so: == *:posix:* ]] || { \\builtin unset POSIXLY_CORRECT; \\builtin set +o posix; }";

/// Puts the agent's alias expansion back (needs a line parsed with aliases off).
const RESTORE_ALIASES: &str =
    "[[ :$__swe_env_bo: != *:expand_aliases:* ]] || \\builtin shopt -s expand_aliases";

/// Guard and the DONE marker + `STATUS:PWD` + NUL, in a group whose stdout/stderr go nowhere; the marker goes to
/// the protocol stream through fd 9. If even the builtin `printf` cannot run, the shell exits (the caller sees the
/// stream end and starts a new shell) rather than leaving the caller waiting.
fn finish(marker: &str, status: &str) -> String {
    let (left, right) = split_marker(marker);
    format!(
        "{{ __swe_env_s={status}; {GUARD}; {RESTORE_POSIX}; {RESTORE_ALIASES}; \\builtin printf '%s%s%s:%s\\0' '{left}' '{right}' \"$__swe_env_s\" \"$PWD\" >&9 || \\exit 1; }} 9>&1 >/dev/null 2>&1\n"
    )
}

/// Quotes arbitrary bytes as a bash ANSI-C string (`$'…'`), byte-exact for any input including NUL-free binary.
pub fn ansi_c_quote(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 3);
    out.push_str("$'");
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\'' => out.push_str("\\'"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            // `!` is escaped so that history expansion (`set -H`) can never rewrite the line.
            b'!' => out.push_str("\\x21"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('\'');
    out
}

/// The text written to the shell's stdin to run `command`: the guard line, which prints the START marker, then the
/// run line, which ends with the DONE marker + `$?:$PWD` + NUL (see the module docs).
pub fn command_script(command: &str, marker: &str) -> String {
    let (start_left, start_right) = split_marker_owned(&start_marker(marker));
    format!(
        "{GUARD}; \\builtin printf '%s%s\\0' '{start_left}' '{start_right}'\n\
         {RESTORE_POSIX}; {RESTORE_ALIASES}; \\builtin eval {} </dev/null 2>&1; {}",
        ansi_c_quote(command.as_bytes()),
        finish(marker, "$?")
    )
}

/// Written after an interrupt: the rest of the interrupted line is gone (Ctrl-C semantics), so this line prints
/// the DONE marker (with the cwd) in its place. When the command finished on its own in the meantime, its own DONE
/// marker comes first and this one is dropped with the next command's pre-START bytes.
pub fn recovery_script(marker: &str) -> String {
    format!("{GUARD}\n{}", finish(marker, "130"))
}

/// The start-up script: merge stderr into stdout, apply environment set-up, then print `marker` + `$$:$PWD` + NUL
/// so the caller learns the shell's pid (needed to interrupt its children) and cwd.
pub fn startup_script(workdir: &str, init_commands: &[String], marker: &str) -> String {
    // Interactive-shell conveniences that would corrupt the protocol are switched off first. The shell's own
    // stderr (prompts, the newline it prints on Ctrl-C) goes nowhere; each command's stderr is merged into stdout.
    let mut script = String::from(
        "set +m +H +o history; PS1=''; PS2=''; PS0=''; PROMPT_COMMAND=''; unset HISTFILE\nexec 2>/dev/null\n",
    );
    script.push_str(&format!(
        "cd {} 2>/dev/null\n",
        ansi_c_quote(workdir.as_bytes())
    ));
    for line in init_commands {
        script.push_str(&format!(
            "eval {} </dev/null >/dev/null 2>&1\n",
            ansi_c_quote(line.as_bytes())
        ));
    }
    script.push_str(&finish(marker, "$$"));
    script
}

/// A shell script, run in a second exec, that sends `signal` to every descendant of `shell_pid` (and to the shell
/// itself when `include_shell`) by walking `/proc`. Needs only bash builtins and `kill`. Prints the pids signalled.
///
/// The shell runs interactively (`bash -i` without a terminal), so a SIGINT to it behaves like Ctrl-C at a prompt:
/// the rest of the current command line is abandoned and the shell reads the next line, state intact.
pub fn kill_descendants_script(shell_pid: u32, signal: &str, include_shell: bool) -> String {
    let shell_too = if include_shell {
        format!("all=\"$all {shell_pid}\"\n")
    } else {
        String::new()
    };
    format!(
        r#"declare -A kids
for st in /proc/[0-9]*/stat; do
  line=
  read -r line < "$st" 2>/dev/null || continue
  pid=${{st#/proc/}}; pid=${{pid%/stat}}
  rest=${{line##*) }}
  set -- $rest
  kids[$2]+=" $pid"
done
queue="${{kids[{shell_pid}]}}"; all=
while [ -n "${{queue// /}}" ]; do
  set -- $queue; p=$1; shift; queue="$*"
  all="$all $p"; queue="$queue ${{kids[$p]}}"
done
{shell_too}[ -n "$all" ] && kill -{signal} $all 2>/dev/null
echo "$all"
"#
    )
}

/// Parses the sentinel trailer `CODE:PWD` (NUL already stripped) into the status and the working directory's
/// bytes, exact whatever the directory name contains.
pub fn parse_trailer(trailer: &[u8]) -> Option<(i32, Vec<u8>)> {
    let colon = trailer.iter().position(|&b| b == b':')?;
    let code = std::str::from_utf8(&trailer[..colon])
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((code, trailer[colon + 1..].to_vec()))
}

fn split_marker(marker: &str) -> (&str, &str) {
    marker.split_at(marker.len() / 2)
}

fn split_marker_owned(marker: &str) -> (String, String) {
    let (left, right) = split_marker(marker);
    (left.to_owned(), right.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_everything_bash_would_interpret() {
        assert_eq!(
            ansi_c_quote(b"a'b\\c\n\t\x01\xff!"),
            r"$'a\'b\\c\n\t\x01\xff\x21'"
        );
        assert_eq!(ansi_c_quote(b"$HOME `x` \"q\""), "$'$HOME `x` \"q\"'");
    }

    #[test]
    fn command_script_never_contains_the_markers_literally() {
        let marker = new_marker();
        let script = command_script("echo hi", &marker);
        assert!(!script.contains(&marker));
        assert!(!script.contains(&start_marker(&marker)));
        assert!(
            script.contains("\\builtin eval $'echo hi' </dev/null 2>&1;"),
            "{script}"
        );
        assert_eq!(script.lines().count(), 2, "{script}");
        // The first line is parsed with the agent's aliases: no reserved word may appear there.
        let guard = script.lines().next().unwrap();
        for word in ["{", "}", "[[", "if", "then", "case", "for", "while", "!"] {
            assert!(
                !guard.split([' ', ';']).any(|w| w == word),
                "{word} in {guard}"
            );
        }
    }

    #[test]
    fn trailer_parses_code_and_pwd_bytes() {
        assert_eq!(
            parse_trailer(b"130:/tmp/a:b\n\xff"),
            Some((130, b"/tmp/a:b\n\xff".to_vec()))
        );
        assert_eq!(parse_trailer(b"x:/"), None);
    }

    /// One command's result as the host parses it.
    #[derive(Debug, PartialEq)]
    struct Ran {
        output: String,
        code: i32,
        cwd: Vec<u8>,
    }

    /// Runs `commands` through a real `bash -i` reading a pipe, framed exactly as the sandbox frames them.
    fn run_in_bash(commands: &[&str]) -> Vec<Ran> {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let workdir = dir.path().to_str().unwrap();
        let boot = new_marker();
        let markers: Vec<String> = commands.iter().map(|_| new_marker()).collect();
        let mut script = startup_script(workdir, &[], &boot);
        for (command, marker) in commands.iter().zip(&markers) {
            script.push_str(&command_script(command, marker));
        }
        let mut child = std::process::Command::new("bash")
            .args([
                "-c",
                "exec bash --noprofile --norc --noediting -i 2>/dev/null",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap().stdout;
        let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
        let mut rest = &out[..];
        let at = find(rest, boot.as_bytes()).expect("start-up sentinel");
        rest = &rest[at..];
        let mut results = Vec::new();
        for marker in &markers {
            let start = start_marker(marker);
            let Some(at) = find(rest, start.as_bytes()) else {
                panic!(
                    "no START for command {}: {:?}",
                    results.len(),
                    String::from_utf8_lossy(rest)
                );
            };
            rest = &rest[at + start.len() + 1..];
            let at = find(rest, marker.as_bytes()).expect("DONE marker");
            let output = String::from_utf8_lossy(&rest[..at]).into_owned();
            rest = &rest[at + marker.len()..];
            let nul = rest.iter().position(|&b| b == 0).unwrap();
            let (code, cwd) = parse_trailer(&rest[..nul]).unwrap();
            rest = &rest[nul + 1..];
            results.push(Ran { output, code, cwd });
        }
        results
    }

    #[test]
    fn frame_survives_shadowed_builtins_aliases_options_and_hooks() {
        // The probe uses names no hijack below redefines: the agent's definitions apply to its own commands.
        let probe = "'/bin/echo' probe; (exit 7)";
        let hijacks = [
            "eval() { echo hijacked; }",
            "printf() { echo hijacked; }; echo() { :; }",
            "builtin() { echo hijacked; }; command() { :; }; enable() { :; }",
            "unset() { :; }; set() { :; }; shopt() { :; }; trap() { :; }",
            "alias if='echo hijacked' '{'='echo hijacked' '[['='echo hijacked' eval='echo hijacked' builtin='echo x'",
            "enable -n printf eval set unset shopt trap echo",
            "enable -n builtin",
            "set -xv; PS4='$(echo ps4)+ '",
            "trap 'echo debug' DEBUG; shopt -s extdebug",
            "PROMPT_COMMAND='echo prompt'; PS0='ps0'; PS1='ps1'; PS2='ps2'",
            "IFS=/; set -f; set -u; set -C",
            "POSIXLY_CORRECT=1",
            "set -o posix",
            "set -H",
        ];
        for hijack in hijacks {
            let ran = run_in_bash(&[hijack, probe, "\\cd /; '/bin/echo' \"$?\""]);
            assert_eq!(ran[1].output, "probe\n", "after {hijack:?}: {ran:?}");
            assert_eq!(ran[1].code, 7, "after {hijack:?}");
            assert_eq!(ran[2].output, "0\n", "after {hijack:?}");
            assert_eq!(ran[2].cwd, b"/", "after {hijack:?}");
        }
        // The agent's own definitions still apply to its commands.
        let ran = run_in_bash(&[
            "printf() { builtin echo mine \"$@\"; }; alias ll='echo aliased'",
            "printf x; ll",
            "set -o posix",
            "shopt -oq posix && echo still-posix",
        ]);
        assert_eq!(ran[1].output, "mine x\naliased\n");
        assert_eq!(ran[3].output, "still-posix\n");
    }

    #[test]
    fn cwd_is_exact_for_any_directory_name() {
        for name in [
            "new\nline",
            "tab\there",
            "quo'te\"s",
            "bad\u{fffd}",
            "trailing\n",
        ] {
            let bytes: Vec<u8> = name.replace('\u{fffd}', "\u{1}").into_bytes();
            let mut bytes = bytes;
            if let Some(b) = bytes.iter_mut().find(|b| **b == 1) {
                *b = 0xff;
            }
            let quoted = ansi_c_quote(&bytes);
            let ran = run_in_bash(&[&format!("mkdir {quoted} && cd {quoted}"), "echo next"]);
            assert_eq!(ran[0].code, 0, "{name:?}: {ran:?}");
            assert!(ran[1].cwd.ends_with(&bytes), "{name:?}: {ran:?}");
            assert_eq!(ran[1].output, "next\n", "{name:?}");
        }
    }
}
