-- cot_stats.sql: how long are the CoTs, in tokens and in steps, by where they came from?
--
-- One row per CoT population: the teacher's CoTs (orion.teacher_cots, shared by every student:
-- student and mode NULL, source 'teacher'), and each student's refined CoTs (orion.refined_cots)
-- per mode (the modes in the rows, in the order of orion.vocabulary_modes) and source ('refined' =
-- a verified rewrite, 'teacher_fallback' = the teacher's CoT kept when no rewrite verified).
--
-- Columns:
--   cot_table      'teacher_cots' or 'refined_cots'
--   student        the student whose refinement made the CoTs (NULL for teacher CoTs, which are
--                  made once and counted with the first student's tokenizer)
--   mode           refinement mode (NULL for teacher CoTs)
--   source         'teacher', 'refined' or 'teacher_fallback'
--   cots           number of CoTs
--   tokens_p10, tokens_p50, tokens_p90, tokens_max, tokens_mean
--                  n_tokens of the CoT table (percentiles interpolated linearly: quantile_cont)
--   with_steps     CoTs that have a row in orion.cot_quality (the step counts come from there)
--   steps_p10, steps_p50, steps_p90, steps_max
--                  cot_quality.n_steps (NULL when no CoT of the row has a cot_quality row)
--
-- Run (see sql/README.md):
--   orion sql sql/cot_stats.sql
--   duckdb -readonly data/orion_store.duckdb -f sql/cot_stats.sql
--   python -c "import duckdb; print(duckdb.connect('data/orion_store.duckdb', read_only=True).sql(open('sql/cot_stats.sql').read()))"

USE orion;

WITH steps_teacher AS (
    -- one cot_quality row per teacher CoT and student (the reference variant's); the step count is
    -- the CoT's own, the same for every student: max() keeps one
    SELECT teacher_cot_id, max(n_steps) AS n_steps
    FROM cot_quality
    WHERE cot_table = 'teacher_cots'
    GROUP BY teacher_cot_id
),
steps_refined AS (
    SELECT student, refined_cot_id, max(n_steps) AS n_steps
    FROM cot_quality
    WHERE cot_table = 'refined_cots'
    GROUP BY student, refined_cot_id
),
cots AS (
    SELECT 'teacher_cots' AS cot_table, NULL::VARCHAR AS student, NULL::VARCHAR AS mode, 'teacher' AS source,
           t.n_tokens, s.n_steps, s.teacher_cot_id IS NOT NULL AS has_quality
    FROM teacher_cots t
    LEFT JOIN steps_teacher s USING (teacher_cot_id)
    UNION ALL
    SELECT 'refined_cots', r.student, r.mode, r.source,
           r.n_tokens, s.n_steps, s.refined_cot_id IS NOT NULL
    FROM refined_cots r
    LEFT JOIN steps_refined s USING (student, refined_cot_id)
),
stats AS (
    SELECT
        cot_table,
        student,
        mode,
        source,
        count(*) AS cots,
        quantile_cont(n_tokens, 0.1) AS tokens_p10,
        quantile_cont(n_tokens, 0.5) AS tokens_p50,
        quantile_cont(n_tokens, 0.9) AS tokens_p90,
        max(n_tokens) AS tokens_max,
        avg(n_tokens) AS tokens_mean,
        count(*) FILTER (WHERE has_quality) AS with_steps,
        quantile_cont(n_steps, 0.1) AS steps_p10,
        quantile_cont(n_steps, 0.5) AS steps_p50,
        quantile_cont(n_steps, 0.9) AS steps_p90,
        max(n_steps) AS steps_max
    FROM cots
    GROUP BY cot_table, student, mode, source
)
SELECT s.*
FROM stats s
LEFT JOIN vocabulary_modes m ON m.mode = s.mode
ORDER BY s.cot_table DESC,  -- teacher_cots first
         s.student NULLS FIRST,
         m.position NULLS LAST, s.mode NULLS FIRST,  -- the vocabulary's order, a mode it lacks after
         s.source;
