-- usage_cost.sql: how many LLM calls and tokens did each stage of the pipeline use?
--
-- One row per stage, detail (reflection mode or evaluated variant), role and model, over every
-- call in orion.llm_calls (a row is a call that was sent once; a re-run answers it from the cache
-- and adds no row). A call belongs to the asset whose rows name it (teacher_cots, student_attempts,
-- refined_cots, benchmark_predictions: the llm_call_id columns), else to the one LLM asset of its
-- role that its Dagster run materialized (orion.materializations: a rejected teacher CoT, an
-- earlier reflection try), judge calls to cot_quality; what neither decides is 'unattributed'.
-- A reflection call is attributed to its mode: the one mode whose rewriter is the call's role
-- (orion.vocabulary_modes), else through the refined_cots row with the same prompt; a prompt two
-- modes share (a problem the student never got wrong is refined alike whether or not the prompt
-- would show the error) is one call, listed once, under the first of them by name. Cost is tokens
-- times the prices in the profile ([endpoints.<role>] price_per_mtok_in / price_per_mtok_out);
-- `orion report` shows it. Details come in the vocabulary's order (orion.vocabulary_modes and
-- orion.vocabulary_variants; a name they lack after).
--
-- Columns:
--   stage               teacher_cots | student_attempts | refined_cots | cot_quality |
--                       benchmark_predictions | unattributed
--   detail              refined_cots: the mode; benchmark_predictions: the variant; else NULL
--   role, model         the endpoint role and the model name the calls went to
--   calls, errors       calls in the cache, and of them those that failed (status 'error')
--   retries             retries spent on them (attempts after the first)
--   prompt_tokens, completion_tokens, reasoning_tokens
--                       summed as the servers reported them (reasoning: part of completion;
--                       NULL where no server said)
--
-- Run (see sql/README.md):
--   orion sql sql/usage_cost.sql
--   duckdb -readonly data/orion_store.duckdb -f sql/usage_cost.sql

USE orion;

WITH llm_assets(role, asset_key) AS (
    VALUES ('teacher', 'teacher_cots'), ('student', 'student_attempts'), ('student', 'benchmark_predictions'),
           ('judge', 'cot_quality')
    UNION SELECT rewriter, 'refined_cots' FROM vocabulary_modes  -- the roles that rewrite in a mode
),
sole_mode AS (
    -- the mode a role's reflection call belongs to when that role rewrites in one mode only
    SELECT rewriter AS role, min(mode) AS mode FROM vocabulary_modes GROUP BY rewriter HAVING count(*) = 1
),
by_run AS (
    -- the one LLM asset of a role that a Dagster run materialized (orion run: one asset per run)
    SELECT m.dagster_run_id, a.role, min(m.asset_key) AS asset_key, min(m.partition_key) AS partition_key
    FROM materializations m JOIN llm_assets a ON a.asset_key = m.asset_key
    GROUP BY m.dagster_run_id, a.role
    HAVING count(DISTINCT m.asset_key) = 1
),
referenced AS (
    SELECT call_id, min(asset_key) AS asset_key, min(detail) AS detail
    FROM (
        SELECT llm_call_id AS call_id, 'teacher_cots' AS asset_key, NULL AS detail FROM teacher_cots
        UNION ALL SELECT llm_call_id, 'student_attempts', NULL FROM student_attempts
        UNION ALL SELECT llm_call_id, 'refined_cots', mode FROM refined_cots
        UNION ALL SELECT llm_call_id, 'benchmark_predictions', variant FROM benchmark_predictions
    )
    WHERE call_id IS NOT NULL
    GROUP BY call_id
),
reflect_modes AS (
    -- the mode of each reflection prompt (every try of a task sends the same messages: one prompt_hash)
    SELECT c.prompt_hash, min(r.mode) AS mode
    FROM refined_cots r JOIN llm_calls c ON c.call_id = r.llm_call_id
    GROUP BY 1
),
attributed AS (
    SELECT c.*,
           coalesce(CASE WHEN c.role = 'judge' THEN 'cot_quality' END, ref.asset_key, run.asset_key,
                    'unattributed') AS stage,
           ref.detail AS ref_detail,
           run.partition_key
    FROM llm_calls c
    LEFT JOIN referenced ref ON ref.call_id = c.call_id
    LEFT JOIN by_run run ON run.dagster_run_id = c.dagster_run_id AND run.role = c.role
),
usage AS (
    SELECT
        a.stage,
        CASE
            WHEN a.stage = 'refined_cots' THEN coalesce(sole.mode, a.ref_detail, m.mode)
            WHEN a.stage = 'benchmark_predictions' THEN coalesce(a.ref_detail, split_part(a.partition_key, '|', 2))
        END AS detail,
        a.role,
        a.model,
        count(*) AS calls,
        count(*) FILTER (WHERE a.status = 'error') AS errors,
        CAST(coalesce(sum(a.retries), 0) AS BIGINT) AS retries,
        CAST(coalesce(sum(a.prompt_tokens), 0) AS BIGINT) AS prompt_tokens,
        CAST(coalesce(sum(a.completion_tokens), 0) AS BIGINT) AS completion_tokens,
        CAST(sum(a.reasoning_tokens) AS BIGINT) AS reasoning_tokens
    FROM attributed a
    LEFT JOIN reflect_modes m ON m.prompt_hash = a.prompt_hash
    LEFT JOIN sole_mode sole ON sole.role = a.role
    GROUP BY ALL
)
SELECT u.*
FROM usage u
LEFT JOIN vocabulary_modes vm ON u.stage = 'refined_cots' AND vm.mode = u.detail
LEFT JOIN vocabulary_variants vv ON u.stage = 'benchmark_predictions' AND vv.variant = u.detail
ORDER BY
    CASE u.stage WHEN 'teacher_cots' THEN 1 WHEN 'student_attempts' THEN 2 WHEN 'refined_cots' THEN 3
                 WHEN 'cot_quality' THEN 4 WHEN 'benchmark_predictions' THEN 5 ELSE 6 END,
    u.detail IS NOT NULL, coalesce(vm.position, vv.position) NULLS LAST, u.detail, u.role, u.model;
