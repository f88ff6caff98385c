-- leaderboard.sql: pass@1 of every model variant on every benchmark, per student and grading rule,
-- over seeds, with the delta over the reference variant (plain distillation) and the untrained student.
--
-- A tidy table (no column per benchmark): one row per student, variant, benchmark and grading rule
-- with scores in orion.benchmark_scores, which holds one row per seed (an SFT seed's checkpoint).
-- Variants come in the order of orion.vocabulary_variants, benchmarks in that of
-- orion.vocabulary_benchmarks, the primary grading rule first (a name the vocabulary lacks comes
-- after the ones it has). The reference variant and the untrained student's are those of kind
-- 'reference' and 'untrained' in orion.vocabulary_variants. Fractions, as in benchmark_scores; deltas in percentage points.
--
-- Columns:
--   student, variant, benchmark  the model's student and variant, and the benchmark scored
--   grading_rule     the rule that graded the predictions (NULL in tables older than the column)
--   primary          whether it is the profile's [eval] compat rule, the one the report compares by
--   seeds            seeds scored (the rows averaged)
--   pass_at_1        mean pass@1 over the seeds
--   pass_at_1_sd     its standard deviation over the seeds (NULL with one seed)
--   pass_at_1_se     the mean over the seeds of each seed's standard error over problems
--   n_problems       problems scored (the most of any seed)
--   n_errors         failed calls, left out of the scores, summed over the seeds
--   delta            100 * (pass_at_1 - the reference variant's pass_at_1) of the same student,
--                    benchmark and grading rule (NULL where either has no score; its own: 0)
--   delta_base       the same over the untrained student's variant
--
-- The paired deltas over the problems both answered, with their bootstrap intervals, are the
-- leaderboard asset's and `orion report`'s (orion.leaderboard, docs/report.md).
--
-- Run (see sql/README.md):
--   orion sql sql/leaderboard.sql
--   duckdb -readonly data/orion_store.duckdb -f sql/leaderboard.sql

USE orion;

WITH cells AS (
    -- a partition (benchmark, student, variant, seed) is replaced, never appended to: one row per seed
    -- and rule; a NaN pass@1 (no answered sample) counts as no score, as in the report
    SELECT
        student,
        variant,
        benchmark,
        grading_rule,
        bool_or("primary") AS "primary",
        count(DISTINCT seed) AS seeds,
        avg(CASE WHEN isnan(pass_at_1) THEN NULL ELSE pass_at_1 END) AS pass_at_1,
        stddev_samp(CASE WHEN isnan(pass_at_1) THEN NULL ELSE pass_at_1 END) AS pass_at_1_sd,
        avg(CASE WHEN isnan(pass_at_1_se) THEN NULL ELSE pass_at_1_se END) AS pass_at_1_se,
        max(n_problems) AS n_problems,
        CAST(sum(n_errors) AS BIGINT) AS n_errors
    FROM benchmark_scores
    GROUP BY student, variant, benchmark, grading_rule
),
against AS (
    SELECT c.*, v.kind
    FROM cells c
    JOIN vocabulary_variants v ON v.variant = c.variant AND v.kind IN ('reference', 'untrained')
),
board AS (
    SELECT
        c.*,
        100 * (c.pass_at_1 - ref.pass_at_1) AS delta,
        100 * (c.pass_at_1 - untrained.pass_at_1) AS delta_base
    FROM cells c
    LEFT JOIN against ref
        ON ref.kind = 'reference' AND ref.student = c.student AND ref.benchmark = c.benchmark
       AND ref.grading_rule IS NOT DISTINCT FROM c.grading_rule
    LEFT JOIN against untrained
        ON untrained.kind = 'untrained' AND untrained.student = c.student AND untrained.benchmark = c.benchmark
       AND untrained.grading_rule IS NOT DISTINCT FROM c.grading_rule
)
SELECT b.*
FROM board b
LEFT JOIN vocabulary_variants v ON v.variant = b.variant
LEFT JOIN vocabulary_benchmarks bm ON bm.benchmark = b.benchmark
LEFT JOIN vocabulary_grading_rules r ON r.grading_rule = b.grading_rule
ORDER BY b.student, v.position NULLS LAST, b.variant, bm.position NULLS LAST, b.benchmark,
         b."primary" DESC NULLS LAST, r.position NULLS LAST, b.grading_rule;
