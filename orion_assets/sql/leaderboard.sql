-- leaderboard.sql: pass@1 of every model variant on every benchmark, with the delta over
-- teacher_sft (the student fine-tuned on the plain teacher CoTs, the paper's baseline).
--
-- One row per variant that has scores (orion.benchmark_scores), in the order base, teacher_sft,
-- orion, orion_no_error, orion_no_reflection. The same numbers as `orion report`'s table:
-- pass@1 as a fraction, delta in percentage points (100 * (pass@1 - teacher_sft's pass@1)).
--
-- Columns:
--   variant
--   <b>, <b>_se, <b>_delta   for each benchmark b in gsm_hard, math500, aime24, amc23:
--                            pass@1, its standard error, and the delta over teacher_sft
--                            (NULL where the variant or teacher_sft has no score on b;
--                            teacher_sft's own delta is 0)
--   benchmarks               benchmarks the variant has a score on
--   mean_pass_at_1           mean pass@1 over those benchmarks
--   mean_delta               mean delta over the benchmarks both it and teacher_sft have
--
-- Run (see sql/README.md):
--   orion sql sql/leaderboard.sql
--   duckdb -readonly data/orion_store.duckdb -f sql/leaderboard.sql

USE orion;

WITH scores AS (
    -- one score per (benchmark, variant): a partition is replaced, never appended to
    SELECT benchmark, variant, any_value(pass_at_1) AS pass_at_1, any_value(pass_at_1_se) AS pass_at_1_se
    FROM benchmark_scores
    GROUP BY benchmark, variant
),
cells AS (
    SELECT s.benchmark, s.variant, s.pass_at_1, s.pass_at_1_se,
           100 * (s.pass_at_1 - ref.pass_at_1) AS delta
    FROM scores s
    LEFT JOIN scores ref ON ref.benchmark = s.benchmark AND ref.variant = 'teacher_sft'
)
SELECT
    variant,
    any_value(pass_at_1) FILTER (WHERE benchmark = 'gsm_hard') AS gsm_hard,
    any_value(pass_at_1_se) FILTER (WHERE benchmark = 'gsm_hard') AS gsm_hard_se,
    any_value(delta) FILTER (WHERE benchmark = 'gsm_hard') AS gsm_hard_delta,
    any_value(pass_at_1) FILTER (WHERE benchmark = 'math500') AS math500,
    any_value(pass_at_1_se) FILTER (WHERE benchmark = 'math500') AS math500_se,
    any_value(delta) FILTER (WHERE benchmark = 'math500') AS math500_delta,
    any_value(pass_at_1) FILTER (WHERE benchmark = 'aime24') AS aime24,
    any_value(pass_at_1_se) FILTER (WHERE benchmark = 'aime24') AS aime24_se,
    any_value(delta) FILTER (WHERE benchmark = 'aime24') AS aime24_delta,
    any_value(pass_at_1) FILTER (WHERE benchmark = 'amc23') AS amc23,
    any_value(pass_at_1_se) FILTER (WHERE benchmark = 'amc23') AS amc23_se,
    any_value(delta) FILTER (WHERE benchmark = 'amc23') AS amc23_delta,
    count(*) AS benchmarks,
    avg(pass_at_1) AS mean_pass_at_1,
    avg(delta) AS mean_delta
FROM cells
GROUP BY variant
ORDER BY array_position(['base', 'teacher_sft', 'orion', 'orion_no_error', 'orion_no_reflection'], variant) NULLS LAST,
         variant;
