//! The persistent-shell protocol: how a command is framed for `bash` reading its stdin, and how the sentinel that
//! ends it is built and parsed. Pure functions; the I/O lives in [`super::docker`].
//!
//! The shell is `bash -i` without a terminal, so an interrupt behaves like Ctrl-C at a prompt (the rest of the
//! command line is dropped, state is kept). Like a terminal, it announces background jobs (`[1] 42`) and says
//! `exit` when it exits; prompts are empty.
//!
//! Each command is sent as `eval $'…' </dev/null 2>&1` followed by a `printf` of a per-command marker, `$?` and `$PWD`.
//! `eval` keeps state in the shell (`cd`, `export`, functions) while turning syntax errors into a non-zero status
//! instead of a shell that waits for more input; `</dev/null` keeps commands from eating the protocol stream. The
//! marker is printed from pieces so that `set -x` traces of the printf line can never look like the marker.

use rand::Rng;

/// Prefix of every sentinel marker.
const MARKER_PREFIX: &str = "__SWE_ENV_";

/// A unique marker for one command.
pub fn new_marker() -> String {
    let nonce: u64 = rand::rng().random();
    format!("{MARKER_PREFIX}DONE_{nonce:016x}__")
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
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('\'');
    out
}

/// The text written to the shell's stdin to run `command` and then print `marker` + `$?:$PWD`.
pub fn command_script(command: &str, marker: &str) -> String {
    let (left, right) = split_marker(marker);
    format!(
        "eval {} </dev/null 2>&1\nprintf '%s%s%s:%s\\n' '{left}' '{right}' \"$?\" \"$PWD\"\n",
        ansi_c_quote(command.as_bytes())
    )
}

/// The start-up script: merge stderr into stdout, apply environment set-up, then print `marker` + `$$:$PWD` so the
/// caller learns the shell's pid (needed to interrupt its children) and cwd.
pub fn startup_script(workdir: &str, init_commands: &[String], marker: &str) -> String {
    let (left, right) = split_marker(marker);
    // Interactive-shell conveniences that would corrupt the protocol are switched off first. The shell's own
    // stderr (prompts, the newline it prints on Ctrl-C) goes nowhere; each command's stderr is merged into stdout.
    let mut script = String::from(
        "set +m +H; PS1=''; PS2=''; PS0=''; PROMPT_COMMAND=''; unset HISTFILE\nexec 2>/dev/null\n",
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
    script.push_str(&format!(
        "printf '%s%s%s:%s\\n' '{left}' '{right}' \"$$\" \"$PWD\"\n"
    ));
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

/// Parses the sentinel trailer `CODE:PWD` into the status and working directory.
pub fn parse_trailer(trailer: &[u8]) -> Option<(i32, String)> {
    let text = String::from_utf8_lossy(trailer);
    let (code, pwd) = text.split_once(':')?;
    Some((code.trim().parse().ok()?, pwd.to_owned()))
}

fn split_marker(marker: &str) -> (&str, &str) {
    marker.split_at(marker.len() / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_everything_bash_would_interpret() {
        assert_eq!(
            ansi_c_quote(b"a'b\\c\n\t\x01\xff"),
            r"$'a\'b\\c\n\t\x01\xff'"
        );
        assert_eq!(ansi_c_quote(b"$HOME `x` \"q\""), "$'$HOME `x` \"q\"'");
    }

    #[test]
    fn command_script_never_contains_the_marker_literally() {
        let marker = new_marker();
        let script = command_script("echo hi", &marker);
        assert!(!script.contains(&marker));
        assert!(
            script.starts_with("eval $'echo hi' </dev/null 2>&1\n"),
            "{script}"
        );
    }

    #[test]
    fn trailer_parses_code_and_pwd_with_colons() {
        assert_eq!(
            parse_trailer(b"130:/tmp/a:b"),
            Some((130, "/tmp/a:b".to_owned()))
        );
        assert_eq!(parse_trailer(b"x:/"), None);
    }
}
