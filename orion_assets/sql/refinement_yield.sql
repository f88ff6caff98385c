-- refinement_yield.sql: how often does self-reflection produce a verified rewrite?
--
-- Yield = share of the problems whose refinement verified (a refined_cots row with
-- source = 'refined'), per student and mode, overall and by the problem's subject and level.
-- The problems refinement was tried on are those with a teacher CoT (orion.teacher_cots, shared
-- by every student; each student's each mode refines every one of them), so a problem that ended
-- as 'teacher_fallback', or that was dropped ([reflection] on_failure = "drop": no refined_cots
-- row), counts as not refined.
--
-- Columns:
--   scope             'mode' (one row per student and mode over all problems, subject and level
--                     NULL) or 'subject_level' (one row per student, mode, subject and level)
--   student           the student the refinement was shown the errors of (refined_cots.student)
--   mode              a mode in refined_cots (in the order of orion.vocabulary_modes; one it lacks after)
--   subject, level    of orion.train_problems (NULL: the problem has none, or scope = 'mode')
--   problems          problems refinement was tried on
--   refined           of them, with a verified rewrite
--   teacher_fallback  of them, kept as the teacher's CoT
--   dropped           of them, with no refined_cots row for this mode
--   yield             refined / problems, in [0, 1]
--
-- Run (see sql/README.md):
--   orion sql sql/refinement_yield.sql
--   duckdb -readonly data/orion_store.duckdb -f sql/refinement_yield.sql

USE orion;

WITH modes AS (
    -- the students and modes that ran (a profile with a replay teacher skips the teacher's own rewrite)
    SELECT DISTINCT student, mode FROM refined_cots
),
tried AS (
    SELECT DISTINCT m.student, x.problem_id, p.subject, p.level
    FROM (SELECT DISTINCT student FROM modes) AS m
    JOIN (SELECT NULL::VARCHAR AS student, problem_id FROM teacher_cots
          UNION SELECT student, problem_id FROM refined_cots) AS x
      ON x.student IS NULL OR x.student = m.student
    LEFT JOIN train_problems p USING (problem_id)
),
outcome AS (
    SELECT student, mode, problem_id,
           bool_or(source = 'refined') AS refined,
           bool_or(source = 'teacher_fallback') AS fallback
    FROM refined_cots
    GROUP BY student, mode, problem_id
),
per_problem AS (
    SELECT m.student, m.mode, t.subject, t.level,
           coalesce(o.refined, false) AS refined,
           coalesce(o.fallback AND NOT o.refined, false) AS fallback,
           o.problem_id IS NULL AS dropped
    FROM modes m
    JOIN tried t ON t.student = m.student
    LEFT JOIN outcome o ON o.student = m.student AND o.mode = m.mode AND o.problem_id = t.problem_id
),
yields AS (
    SELECT
        CASE WHEN grouping(subject, level) = 0 THEN 'subject_level' ELSE 'mode' END AS scope,
        student,
        mode,
        subject,
        level,
        count(*) AS problems,
        count(*) FILTER (WHERE refined) AS refined,
        count(*) FILTER (WHERE fallback) AS teacher_fallback,
        count(*) FILTER (WHERE dropped) AS dropped,
        count(*) FILTER (WHERE refined) / count(*) AS yield
    FROM per_problem
    GROUP BY GROUPING SETS ((student, mode), (student, mode, subject, level))
)
SELECT y.*
FROM yields y
LEFT JOIN vocabulary_modes v ON v.mode = y.mode
ORDER BY y.student, v.position NULLS LAST, y.mode,
         y.scope <> 'mode',  -- the mode's overall row first
         y.subject NULLS LAST,
         try_cast(regexp_extract(y.level, '[0-9]+(\.[0-9]+)?') AS DOUBLE) NULLS LAST, y.level NULLS LAST;
