//! The function listing behind `engine::functions::list`, cached against the core's functions
//! generation: a listing of 100k functions is built once per change, not once per call, and
//! the unfiltered answers are serialised once per change as well and sent as they are.

use std::sync::{Arc, OnceLock};

use iii_core::{Core, FunctionEntry, SharedJson};
use iii_protocol::{codes, ErrorBody};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;

use super::views::function_summary;

/// One function as listings show it, with what their filters look at.
pub(super) struct Listed {
    /// The function itself (id, description).
    pub func: Arc<FunctionEntry>,
    /// Its worker's name at the time the listing was built.
    pub worker_name: String,
    /// Engine-internal: shown only with `include_internal`.
    pub hidden: bool,
    /// The summary object listings return.
    pub summary: Value,
}

/// The answer's shape, `{"functions": [...]}`, borrowing the summaries instead of cloning them.
#[derive(Serialize)]
struct FunctionsAnswer<'a> {
    functions: Vec<&'a Value>,
}

/// The `engine::functions::list` answer holding `summaries`, serialised.
pub(super) fn functions_answer<'a>(
    summaries: impl IntoIterator<Item = &'a Value>,
) -> Result<SharedJson, ErrorBody> {
    let answer = FunctionsAnswer {
        functions: summaries.into_iter().collect(),
    };
    SharedJson::new(&answer).map_err(|e| {
        ErrorBody::new(
            codes::SERIALIZATION_ERROR,
            format!("cannot serialise the function listing: {e}"),
        )
    })
}

/// Every function at one generation, and its unfiltered answers once someone asked for them.
pub(super) struct Snapshot {
    /// Sorted by id then namespace.
    pub listed: Vec<Listed>,
    /// The answer with no filter, without engine-internal functions.
    public: OnceLock<SharedJson>,
    /// The answer with no filter but `include_internal`.
    everything: OnceLock<SharedJson>,
}

impl Snapshot {
    /// The serialised answer to an unfiltered request, built on the first such request of
    /// this generation.
    pub fn unfiltered(&self, include_internal: bool) -> Result<SharedJson, ErrorBody> {
        let slot = if include_internal {
            &self.everything
        } else {
            &self.public
        };
        if let Some(done) = slot.get() {
            return Ok(done.clone());
        }
        let answer = functions_answer(
            self.listed
                .iter()
                .filter(|f| include_internal || !f.hidden)
                .map(|f| &f.summary),
        )?;
        // Two first callers may both build it; they build the same text and one is kept.
        Ok(slot.get_or_init(|| answer).clone())
    }
}

/// The last snapshot built and the functions generation it reflects.
#[derive(Default)]
pub(super) struct ListingCache {
    last: Mutex<Option<(u64, Arc<Snapshot>)>>,
}

impl ListingCache {
    /// Every function at the current generation; rebuilt only when the generation moved.
    pub fn snapshot(&self, core: &Core) -> Arc<Snapshot> {
        // Read before the table: a change racing the build bumps the generation after it has
        // changed the table, so a stale listing is never stored under a newer generation.
        let generation = core.functions_generation();
        let mut last = self.last.lock();
        if let Some((g, snapshot)) = last.as_ref() {
            if *g == generation {
                return snapshot.clone();
            }
        }
        let listed = core
            .all_functions()
            .into_iter()
            .map(|func| Listed {
                worker_name: func.worker_name(),
                hidden: (func.id.starts_with("engine::")
                    && !func.id.starts_with("engine::queue::"))
                    || func.is_internal(),
                summary: function_summary(&func),
                func,
            })
            .collect();
        let snapshot = Arc::new(Snapshot {
            listed,
            public: OnceLock::new(),
            everything: OnceLock::new(),
        });
        *last = Some((generation, snapshot.clone()));
        snapshot
    }
}
