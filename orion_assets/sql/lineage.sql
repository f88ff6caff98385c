-- lineage.sql: everything one benchmark score stands on, row by row.
--
-- Starts from one row of orion.benchmark_scores and walks orion.lineage_edges
-- (child_table, child_id, parent_table, parent_id) down with WITH RECURSIVE: the score's
-- predictions, their benchmark problems and checkpoint, the checkpoint's SFT examples and
-- student_base_model row, the cot_quality rows, teacher and refined CoTs, the wrong student attempts the
-- refinements were shown (and their orion.student_errors rows), the training problems, and the
-- LLM calls of every generated row.
--
-- Which score: edit the `params` CTE below. score_id wins when set; otherwise the first score
-- by (benchmark, variant) among those matching benchmark and variant (NULL matches any). The
-- default variant is the method's own: that of the first mode in orion.vocabulary_modes (the
-- untrained student has no SFT data behind it).
--
-- Columns:
--   score_id, benchmark, variant  the score walked from (the same on every row)
--   table_name                    a table reached (benchmark_scores itself included)
--   ids                           distinct rows of that table reached
--                                 (no row when the params match no score)
--
-- Run (see sql/README.md):
--   orion sql sql/lineage.sql
--   duckdb -readonly data/orion_store.duckdb -f sql/lineage.sql

USE orion;

WITH RECURSIVE
params AS (
    SELECT
        NULL::VARCHAR  AS score_id,    -- e.g. '3f1c...': this score (the two below are ignored)
        NULL::VARCHAR  AS benchmark,   -- a name of vocabulary_benchmarks; NULL: any benchmark
        (SELECT variant FROM vocabulary_modes ORDER BY position LIMIT 1) AS variant
                                       -- a name of vocabulary_variants; NULL: any variant
),
start AS (
    SELECT s.score_id, s.benchmark, s.variant
    FROM benchmark_scores s, params p
    WHERE CASE WHEN p.score_id IS NOT NULL THEN s.score_id = p.score_id
               ELSE (p.benchmark IS NULL OR s.benchmark = p.benchmark)
                    AND (p.variant IS NULL OR s.variant = p.variant)
          END
    ORDER BY s.benchmark, s.variant, s.score_id
    LIMIT 1
),
edges AS MATERIALIZED (
    -- computed once, not once per step of the walk
    SELECT child_table, child_id, parent_table, parent_id FROM lineage_edges
),
walk(table_name, id) AS MATERIALIZED (
    SELECT 'benchmark_scores', score_id FROM start
    UNION  -- not UNION ALL: a row reached twice (a problem under several CoTs) is walked once
    SELECT e.parent_table, e.parent_id
    FROM edges e
    -- semi-joins: their hash tables are built on the rows reached in the last step, not on the
    -- edges; the first skips, cheaply, the edges of tables that step did not reach
    WHERE e.child_table IN (SELECT DISTINCT table_name FROM walk)
      AND (e.child_table, e.child_id) IN (SELECT table_name, id FROM walk)
),
reached AS (
    SELECT table_name, id FROM walk
    UNION ALL
    -- the student_errors rows of the wrong attempts reached (an error is a child of its attempt,
    -- so the walk down does not meet it)
    SELECT 'student_errors', error_id FROM student_errors
    WHERE attempt_id IN (SELECT id FROM walk WHERE table_name = 'student_attempts')
)
SELECT
    st.score_id,
    st.benchmark,
    st.variant,
    w.table_name,
    count(*) AS ids
FROM reached w
CROSS JOIN start st
GROUP BY st.score_id, st.benchmark, st.variant, w.table_name
ORDER BY array_position(['benchmark_scores', 'benchmark_predictions', 'benchmark_problems',
                         'student_checkpoint', 'student_base_model', 'sft_dataset', 'cot_quality',
                         'refined_cots', 'teacher_cots', 'student_attempts', 'student_errors',
                         'train_problems', 'llm_calls'], w.table_name) NULLS LAST,
         w.table_name;
