//! `iii --help` and every subcommand's `--help` list the options of upstream's CLI reference
//! (embedded here, since that reference lives outside the repository), each with its default
//! where upstream shows one.

use iii_tests::run_iii;

/// An option's flags as help prints them, and its default where upstream shows one.
type Opt = (&'static str, Option<&'static str>);

/// (subcommand path, options) as upstream's reference lists them.
const REFERENCE: &[(&[&str], &[Opt])] = &[
    (
        &[],
        &[
            ("-c, --config", Some("config.yaml")),
            ("-v, --version", None),
            ("--use-default-config", None),
            ("--no-update-check", None),
        ],
    ),
    (
        &["trigger"],
        &[
            ("--json", None),
            ("--address", Some("localhost")),
            ("--port", Some("49134")),
            ("--timeout-ms", Some("30000")),
        ],
    ),
    (&["update"], &[("--list-targets", None)]),
    (
        &["worker", "add"],
        &[
            ("--reset-config", None),
            ("-f, --force", None),
            ("--no-wait", None),
        ],
    ),
    (&["worker", "clear"], &[("-y, --yes", None)]),
    (
        &["worker", "exec"],
        &[
            ("-e, --env", None),
            ("-w, --workdir", None),
            ("-t, --tty", None),
            ("--no-tty", None),
            ("--timeout", None),
        ],
    ),
    (
        &["worker", "init"],
        &[
            ("-d, --directory", None),
            ("--template-dir", None),
            ("--allow-non-empty", None),
            ("-l, --language", None),
            ("--skip-iii", None),
        ],
    ),
    (&["worker", "list"], &[]),
    (
        &["worker", "logs"],
        &[
            ("-f, --follow", None),
            ("--address", Some("localhost")),
            ("--port", Some("49134")),
        ],
    ),
    (&["worker", "reinstall"], &[("--reset-config", None)]),
    (&["worker", "remove"], &[("-y, --yes", None)]),
    (
        &["worker", "restart"],
        &[
            ("--no-wait", None),
            ("--port", Some("49134")),
            ("--config", None),
        ],
    ),
    (
        &["worker", "start"],
        &[
            ("--no-wait", None),
            ("--port", Some("49134")),
            ("--config", None),
        ],
    ),
    (&["worker", "status"], &[("--no-watch", None)]),
    (&["worker", "stop"], &[("-y, --yes", None)]),
    (&["worker", "sync"], &[("--frozen", None)]),
    (&["worker", "update"], &[]),
    (&["worker", "verify"], &[("--strict", None)]),
    (
        &["worker", "sandbox", "create"],
        &[
            ("--cpus", Some("1")),
            ("--memory", Some("512")),
            ("--idle-timeout", None),
            ("--name", None),
            ("--network", None),
            ("-e, --env", None),
            ("--port", Some("49134")),
        ],
    ),
    (
        &["worker", "sandbox", "download"],
        &[("--port", Some("49134"))],
    ),
    (
        &["worker", "sandbox", "exec"],
        &[
            ("--timeout", None),
            ("-e, --env", None),
            ("--port", Some("49134")),
        ],
    ),
    (&["worker", "sandbox", "list"], &[("--port", Some("49134"))]),
    (
        &["worker", "sandbox", "run"],
        &[
            ("--cpus", Some("1")),
            ("--memory", Some("512")),
            ("--port", Some("49134")),
        ],
    ),
    (&["worker", "sandbox", "stop"], &[("--port", Some("49134"))]),
    (
        &["worker", "sandbox", "upload"],
        &[
            ("--mode", Some("0644")),
            ("--parents", None),
            ("--port", Some("49134")),
        ],
    ),
];

/// The subcommands upstream's `iii --help` lists that this binary provides itself (`console` is
/// a separate upstream binary; `project` and its rows join this table with that command).
const SUBCOMMANDS: &[&str] = &["cloud", "trigger", "update", "worker"];

/// The help text of one option: its line and the description lines under it, up to the next
/// option.
fn block<'a>(help: &'a str, flag: &str) -> Option<String> {
    let lines: Vec<&'a str> = help.lines().collect();
    let start = lines.iter().position(|l| {
        let t = l.trim_start();
        t.starts_with(flag)
            && t[flag.len()..]
                .chars()
                .next()
                .is_none_or(|c| c == ' ' || c == '=')
    })?;
    let mut b = lines[start].to_string();
    for l in &lines[start + 1..] {
        if l.trim_start().starts_with('-') || !l.starts_with(' ') && !l.is_empty() {
            break;
        }
        b.push('\n');
        b.push_str(l);
    }
    Some(b)
}

#[test]
fn every_help_lists_upstreams_options_with_their_defaults() {
    let mut missing = Vec::new();
    for (path, options) in REFERENCE {
        let mut args = path.to_vec();
        args.push("--help");
        let (code, out, err) = run_iii(&args, None);
        assert_eq!(code, 0, "iii {}: {err}", args.join(" "));
        for (flag, default) in *options {
            match (block(&out, flag), default) {
                (None, _) => missing.push(format!("iii {}: no `{flag}`", path.join(" "))),
                (Some(b), Some(d)) if !b.contains(&format!("[default: {d}")) => {
                    missing.push(format!(
                        "iii {}: `{flag}` without [default: {d}]:\n{b}",
                        path.join(" ")
                    ))
                }
                _ => {}
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn top_level_help_lists_the_subcommands() {
    let (code, out, _) = run_iii(&["--help"], None);
    assert_eq!(code, 0);
    let commands = out.split("Commands:").nth(1).expect("a Commands section");
    for c in SUBCOMMANDS {
        assert!(
            commands
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{c} "))),
            "`{c}` missing from iii --help:\n{out}"
        );
    }
}
