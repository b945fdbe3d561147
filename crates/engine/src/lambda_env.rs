//! What a runtime sees of Lambda, whatever isolates it: its command line, its environment (Lambda's
//! reserved variables, paths and logging controls) and the bootstraps at `/var/runtime`. Pure
//! functions of the function and its runtime, so every backend starts the same process.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use voltrun_domain::function::{EnvVars, FunctionRecord, LogFormat, RuntimeFamily};

use crate::isolation::RuntimeProcess;
use crate::{EngineError, RuntimeInfo};

/// The port of the Runtime API on each instance's own loopback (as on Lambda).
pub const RUNTIME_API_PORT: u16 = 9001;

const PYTHON_BOOTSTRAP: &str = include_str!("../bootstraps/bootstrap.py");
const NODE_BOOTSTRAP: &str = include_str!("../bootstraps/bootstrap.js");

/// Where the engine keeps the files instances mount besides their code, under its work directory.
pub fn runtime_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("runtime")
}

/// Where the bootstraps are (an instance sees them at `/var/runtime`).
pub fn bootstraps_dir(work_dir: &Path) -> PathBuf {
    runtime_dir(work_dir).join("bootstraps")
}

/// A directory instances read from (mode 0755, whatever the umask).
pub fn create_shared_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
}

/// Writes the bootstraps (readable by every instance) into [`bootstraps_dir`].
pub fn write_bootstraps(work_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = bootstraps_dir(work_dir);
    for d in [work_dir, &runtime_dir(work_dir), &dir] {
        create_shared_dir(d)?;
    }
    for (name, contents) in [
        ("bootstrap.py", PYTHON_BOOTSTRAP),
        ("bootstrap.js", NODE_BOOTSTRAP),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, contents)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// The runtime's command line and whole environment for the instance `instance` of `function`,
/// started at `now`: the function's own variables, then Lambda's.
pub fn runtime_process(
    function: &FunctionRecord,
    runtime: &RuntimeInfo,
    env: &EnvVars,
    instance: &str,
    now: DateTime<Utc>,
) -> Result<RuntimeProcess, EngineError> {
    let family = RuntimeFamily::of(&runtime.id)
        .ok_or_else(|| EngineError::Internal(format!("unknown runtime {}", runtime.id)))?;
    let command = match (family, &runtime.interpreter) {
        (RuntimeFamily::Python, Some(interpreter)) => vec![
            interpreter.display().to_string(),
            "/var/runtime/bootstrap.py".into(),
        ],
        (RuntimeFamily::Node, Some(interpreter)) => vec![
            interpreter.display().to_string(),
            "/var/runtime/bootstrap.js".into(),
        ],
        (RuntimeFamily::Provided, _) => vec!["/var/task/bootstrap".into()],
        (RuntimeFamily::Python | RuntimeFamily::Node, None) => {
            return Err(EngineError::Internal(format!(
                "runtime {} has no interpreter",
                runtime.id
            )));
        }
    };
    let mut vars: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.extend([
        (
            "AWS_LAMBDA_RUNTIME_API".to_string(),
            format!("127.0.0.1:{RUNTIME_API_PORT}"),
        ),
        ("_HANDLER".into(), function.handler.clone()),
        ("LAMBDA_TASK_ROOT".into(), "/var/task".into()),
        ("LAMBDA_RUNTIME_DIR".into(), "/var/runtime".into()),
        ("AWS_LAMBDA_FUNCTION_NAME".into(), function.name.clone()),
        (
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(),
            function.memory_mb.to_string(),
        ),
        (
            "AWS_LAMBDA_FUNCTION_VERSION".into(),
            function.version.to_string(),
        ),
        // Where the instance's logs go, named as Lambda names them (the group as the built-in
        // bootstraps report it); the official runtime interface clients put them on the
        // context, and aws-lambda-ric refuses to run without them.
        (
            "AWS_LAMBDA_LOG_GROUP_NAME".into(),
            format!("/voltrun/{}", function.name),
        ),
        (
            "AWS_LAMBDA_LOG_STREAM_NAME".into(),
            format!(
                "{}/[{}]{instance}",
                now.format("%Y/%m/%d"),
                function.version
            ),
        ),
        ("AWS_LAMBDA_INITIALIZATION_TYPE".into(), "on-demand".into()),
        ("AWS_REGION".into(), "local".into()),
        ("AWS_DEFAULT_REGION".into(), "local".into()),
        ("TZ".into(), ":UTC".into()),
        ("LANG".into(), "C.UTF-8".into()),
        // Lambda's: layers' programs and libraries (`/opt/bin`, `/opt/lib`) come after the
        // system's, the function's own libraries (`/var/task/lib`) before its layers'. The
        // system's library directories come first, so a function's `libz.so.1` cannot replace
        // the one its interpreter links (Debian's are the multiarch ones).
        (
            "PATH".into(),
            "/usr/local/bin:/usr/bin:/bin:/opt/bin".into(),
        ),
        ("LD_LIBRARY_PATH".into(), library_path()),
        ("HOME".into(), "/tmp".into()),
    ]);
    // Lambda's module path for Node.js: layers' packages (`/opt/nodejs/node<major>/node_modules`,
    // then `/opt/nodejs/node_modules`) before the runtime's and the function's own. (Python's
    // bootstrap puts `/opt/python` on `sys.path` itself, as Lambda's does.)
    // The function may set its own, as on Lambda.
    if family == RuntimeFamily::Node && !env.contains_key("NODE_PATH") {
        let major = runtime.id.trim_start_matches("nodejs");
        vars.push((
            "NODE_PATH".into(),
            format!(
                "/opt/nodejs/node{major}/node_modules:/opt/nodejs/node_modules:\
                 /var/runtime/node_modules:/var/runtime:/var/task"
            ),
        ));
    }
    // Lambda's advanced logging controls, as its runtimes (and AWS's clients) read them.
    if function.log_format == LogFormat::Json {
        vars.push(("AWS_LAMBDA_LOG_FORMAT".into(), "JSON".into()));
    }
    if let Some(level) = function.log_level {
        vars.push(("AWS_LAMBDA_LOG_LEVEL".into(), level.env_value().into()));
    }
    Ok(RuntimeProcess { command, env: vars })
}

/// `LD_LIBRARY_PATH` inside an instance: the system's directories, then the function's and its
/// layers', in Lambda's order.
fn library_path() -> String {
    let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
    format!(
        "/lib/{multiarch}:/usr/lib/{multiarch}:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:\
         /var/task:/var/task/lib:/opt/lib"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use voltrun_domain::function::LogLevel;

    fn runtime(id: &str, interpreter: Option<&str>) -> RuntimeInfo {
        RuntimeInfo {
            id: id.into(),
            family: String::new(),
            version: None,
            interpreter: interpreter.map(PathBuf::from),
            binds: Vec::new(),
        }
    }

    fn var<'a>(process: &'a RuntimeProcess, name: &str) -> Vec<&'a str> {
        process
            .env
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn day() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .to_utc()
    }

    #[test]
    fn a_runtime_sees_lambdas_variables_after_its_own() {
        let mut function = crate::test_function("python3.11");
        function.version = 7;
        let env = EnvVars::from([("GREETING".to_string(), "hi".to_string())]);
        let python = runtime("python3.11", Some("/usr/bin/python3.11"));
        let process = runtime_process(&function, &python, &env, "i-1", day()).unwrap();

        assert_eq!(
            process.command,
            ["/usr/bin/python3.11", "/var/runtime/bootstrap.py"]
        );
        assert_eq!(process.env[0], ("GREETING".into(), "hi".into()));
        for (name, value) in [
            ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
            ("_HANDLER", "main.handler"),
            ("AWS_LAMBDA_FUNCTION_NAME", "hello"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"),
            ("AWS_LAMBDA_FUNCTION_VERSION", "7"),
            ("AWS_LAMBDA_LOG_GROUP_NAME", "/voltrun/hello"),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "2026/11/30/[7]i-1"),
            ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand"),
            ("LAMBDA_TASK_ROOT", "/var/task"),
            ("LAMBDA_RUNTIME_DIR", "/var/runtime"),
            ("AWS_REGION", "local"),
            ("AWS_DEFAULT_REGION", "local"),
            ("TZ", ":UTC"),
            ("LANG", "C.UTF-8"),
            ("HOME", "/tmp"),
            ("PATH", "/usr/local/bin:/usr/bin:/bin:/opt/bin"),
        ] {
            assert_eq!(var(&process, name), [value], "{name}");
        }
        let libraries = var(&process, "LD_LIBRARY_PATH")[0];
        assert!(
            libraries.starts_with("/lib/"),
            "the system's first: {libraries}"
        );
        assert!(
            libraries.ends_with(":/var/task/lib:/opt/lib"),
            "{libraries}"
        );
        assert!(var(&process, "NODE_PATH").is_empty());
        assert!(var(&process, "AWS_LAMBDA_LOG_FORMAT").is_empty());
    }

    #[test]
    fn node_gets_lambdas_module_path_unless_the_function_sets_its_own() {
        let function = crate::test_function("nodejs20");
        let node = runtime("nodejs20", Some("/usr/bin/node"));
        let process = runtime_process(&function, &node, &EnvVars::new(), "i-1", day()).unwrap();
        assert_eq!(
            process.command,
            ["/usr/bin/node", "/var/runtime/bootstrap.js"]
        );
        assert_eq!(
            var(&process, "NODE_PATH"),
            [
                "/opt/nodejs/node20/node_modules:/opt/nodejs/node_modules:/var/runtime/node_modules:/var/runtime:/var/task"
            ]
        );

        let own = EnvVars::from([("NODE_PATH".to_string(), "/var/task/lib".to_string())]);
        let process = runtime_process(&function, &node, &own, "i-1", day()).unwrap();
        assert_eq!(var(&process, "NODE_PATH"), ["/var/task/lib"]);
    }

    #[test]
    fn json_logging_and_custom_runtimes() {
        let mut function = crate::test_function("provided");
        function.log_format = LogFormat::Json;
        function.log_level = Some(LogLevel::Warn);
        let process = runtime_process(
            &function,
            &runtime("provided", None),
            &EnvVars::new(),
            "i",
            day(),
        )
        .unwrap();
        assert_eq!(process.command, ["/var/task/bootstrap"]);
        assert_eq!(var(&process, "AWS_LAMBDA_LOG_FORMAT"), ["JSON"]);
        assert_eq!(var(&process, "AWS_LAMBDA_LOG_LEVEL"), ["WARN"]);

        for id in ["python3.11", "nodejs20"] {
            assert!(matches!(
                runtime_process(&function, &runtime(id, None), &EnvVars::new(), "i", day()),
                Err(EngineError::Internal(_))
            ));
        }
    }
}
