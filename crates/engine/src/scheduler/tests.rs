//! The scheduler driven through its seams: a stand-in backend and code source, so what is measured
//! and what is evicted can be checked without a sandbox.

use std::sync::Mutex;

use super::*;
use crate::isolation::{InvokeRequest, RunningInstance};
use crate::runtime_api::RuntimeReply;
use crate::{CodeSourceError, test_function};

/// A backend with a fixed number of slots (as the namespace backend has host uids): a live instance
/// holds one until it is stopped. Each start takes `START` and records whether the scheduler's
/// memory had room for a 3,968 MB template beside it (what a 4,096 MB budget has left beside a
/// 128 MB instance).
#[derive(Debug)]
struct Slots(Arc<Mutex<usize>>, Arc<Mutex<Vec<bool>>>);

/// How long a stand-in instance takes to start.
const START: Duration = Duration::from_millis(150);

#[async_trait]
impl Isolation for Slots {
    fn backend(&self) -> &'static str {
        "stand-in"
    }

    fn describe(&self) -> String {
        "stand-in instances".into()
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<Box<dyn RunningInstance>, StartError> {
        {
            let mut free = self.0.lock().unwrap();
            if *free == 0 {
                return Err(StartError::Exhausted("slot"));
            }
            *free -= 1;
        }
        self.1
            .lock()
            .unwrap()
            .push(spec.capacity.try_reserve(3968).is_some());
        tokio::time::sleep(START).await;
        Ok(Box::new(Stub(self.0.clone())))
    }
}

/// Answers `"done"`, after half a second when the event asks it to.
#[derive(Debug)]
struct Stub(Arc<Mutex<usize>>);

#[async_trait]
impl RunningInstance for Stub {
    async fn invoke(&mut self, request: InvokeRequest) -> InvokeResult {
        if request.event.starts_with(b"\"slow\"") {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        InvokeResult::Replied(RuntimeReply::Response(Bytes::from_static(b"\"done\"")))
    }

    async fn logs(&mut self) -> Vec<voltrun_domain::execution::LogLine> {
        Vec::new()
    }

    fn memory_peak_mb(&self) -> Option<i64> {
        Some(1)
    }

    fn healthy(&self) -> bool {
        true
    }

    async fn stop(self: Box<Self>) {
        *self.0.lock().unwrap() += 1;
    }
}

/// Code that takes `delay` to read, as a busy database's would.
#[derive(Debug)]
struct SlowCode(Duration);

#[async_trait]
impl CodeSource for SlowCode {
    async fn code(&self, _sha256: &str) -> Result<Option<Vec<u8>>, CodeSourceError> {
        tokio::time::sleep(self.0).await;
        Ok(Some(b"#!/bin/sh\n".to_vec()))
    }

    async fn referenced(&self, _sha256: &str) -> Result<bool, CodeSourceError> {
        Ok(true)
    }
}

/// An engine over `slots` stand-in slots, whose code takes `code_delay` to read; also what each
/// start found of the memory budget (see [`Slots`]).
fn engine(
    slots: usize,
    code_delay: Duration,
) -> (Arc<LocalEngine>, PathBuf, Arc<Mutex<Vec<bool>>>) {
    let work_dir = std::env::temp_dir().join(format!("scheduler-{}", Uuid::now_v7().simple()));
    let config = LocalEngineConfig {
        work_dir: work_dir.clone(),
        keep_alive: Duration::from_secs(600),
        max_concurrency_per_function: 4,
        memory_budget_mb: 4096,
        user_memory_mb: 4096,
        // Long: a refusal that comes back at once did not wait for it.
        queue_timeout: Duration::from_secs(5),
        // No unprivileged extractor: the stand-in code is one file.
        uid_base: 0,
        tmp_size_mb: 16,
        max_processes: 16,
        node: "test".into(),
        selection: None,
        code_gc_after: None,
    };
    let provided = RuntimeInfo {
        id: "provided".into(),
        family: "provided".into(),
        version: None,
        interpreter: None,
        binds: Vec::new(),
    };
    let room = Arc::new(Mutex::new(Vec::new()));
    let engine = LocalEngine::new(
        config,
        Arc::new(SlowCode(code_delay)),
        vec![provided],
        Arc::new(Slots(Arc::new(Mutex::new(slots)), room.clone())),
    )
    .unwrap();
    (engine, work_dir, room)
}

fn function() -> FunctionRecord {
    let mut function = test_function("provided");
    function.code_filename = Some("bootstrap".into());
    function.code_sha256 = format!("{:064x}", Uuid::now_v7().as_u128());
    function
}

async fn invoke(
    engine: &LocalEngine,
    function: &FunctionRecord,
    event: &str,
) -> Result<InvocationResult, EngineError> {
    engine
        .invoke(Invocation {
            execution_id: Uuid::now_v7(),
            function: function.clone(),
            env: EnvVars::new(),
            event: serde_json::Value::String(event.into()),
        })
        .await
}

#[tokio::test]
async fn the_init_duration_is_the_backends_start_not_the_wait_for_code() {
    let (engine, dir, _) = engine(1, Duration::from_millis(400));
    let function = function();
    let clock = Instant::now();
    let first = invoke(&engine, &function, "fast").await.unwrap().outcome;
    assert!(clock.elapsed() >= Duration::from_millis(550));
    assert!(first.cold_start);
    let init = first
        .init_duration_ms
        .expect("a cold start reports its init");
    assert!(
        (150..400).contains(&init),
        "init {init} ms: the start's 150 ms, not the code's 400 ms read"
    );
    let warm = invoke(&engine, &function, "fast").await.unwrap().outcome;
    assert!(!warm.cold_start);
    assert_eq!(
        warm.init_duration_ms, None,
        "only the first invocation reports init"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_backend_out_of_slots_makes_the_oldest_idle_instance_give_way_but_never_a_busy_one() {
    let (engine, dir, _) = engine(2, Duration::ZERO);
    let (a, b, c) = (function(), function(), function());
    assert!(
        invoke(&engine, &a, "fast")
            .await
            .unwrap()
            .outcome
            .cold_start
    );
    assert!(
        invoke(&engine, &b, "fast")
            .await
            .unwrap()
            .outcome
            .cold_start
    );
    // A's and B's idle instances hold both slots: C's cold start stops the one unused longest.
    let outcome = invoke(&engine, &c, "fast").await.unwrap().outcome;
    assert_eq!(outcome.output, Some(serde_json::json!("done")));
    assert!(
        !invoke(&engine, &b, "fast")
            .await
            .unwrap()
            .outcome
            .cold_start,
        "B's instance, used more recently, stayed"
    );
    assert!(
        invoke(&engine, &a, "fast")
            .await
            .unwrap()
            .outcome
            .cold_start,
        "A's instance was evicted"
    );

    // Both slots busy: a cold start finds nothing to evict and is refused at once, not queued
    // behind them for the queue timeout.
    let busy: Vec<_> = [b.clone(), c.clone()]
        .into_iter()
        .map(|f| {
            let engine = engine.clone();
            tokio::spawn(async move { invoke(&engine, &f, "slow").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = Instant::now();
    assert!(matches!(
        invoke(&engine, &function(), "fast").await,
        Err(EngineError::Overloaded)
    ));
    assert!(refused.elapsed() < Duration::from_secs(1));
    for run in busy {
        assert!(run.await.unwrap().is_ok());
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_backend_asks_the_schedulers_budget_for_what_it_runs_beside_instances() {
    let (engine, dir, room) = engine(1, Duration::ZERO);
    let small = function();
    invoke(&engine, &small, "fast").await.unwrap();
    engine.release(small.id).await;
    let mut big = function();
    big.memory_mb = 4096;
    invoke(&engine, &big, "fast").await.unwrap();
    assert_eq!(
        *room.lock().unwrap(),
        [true, false],
        "beside a 128 MB instance the budget has 3,968 MB left; beside a 4,096 MB one, none"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
