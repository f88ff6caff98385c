-- error_taxonomy.sql: how does the student fail during error exposure, by subject and level?
--
-- orion.student_errors joined to orion.train_problems (on problem_id), counted per student by the
-- problem's subject and level and the error type (vocabulary.ERROR_TYPES: 'wrong_answer', 'no_answer',
-- 'truncated', 'repetition_loop'; docs/exposure.md).
-- A problem without a subject or level (a grade-school word problem has neither) falls in the NULL group.
--
-- Columns:
--   student           the student whose attempts these are (each student's rows stand alone)
--   subject, level    the problems' subject and level (orion.train_problems; NULL: the problem has none)
--   error_type        the attempts' error type (orion.student_errors.error_type)
--   errors            wrong attempts of this type in the group
--   group_errors      wrong attempts of any type in the (student, subject, level) group
--   share_in_group    errors / group_errors: sums to 1 over the error types of each (student, subject, level)
--   share_overall     errors / all the student's errors: sums to 1 over each student's rows
--   group_attempts    all the student's graded attempts (orion.student_attempts) on the group's problems
--   rate_per_attempt  errors / group_attempts: how often an attempt in the group fails this way
--
-- Run (see sql/README.md):
--   orion sql sql/error_taxonomy.sql
--   duckdb -readonly data/orion_store.duckdb -f sql/error_taxonomy.sql

USE orion;

WITH counts AS (
    SELECT e.student, p.subject, p.level, e.error_type, count(*) AS errors
    FROM student_errors e
    JOIN train_problems p USING (problem_id)
    GROUP BY ALL
),
attempts AS (
    SELECT a.student, p.subject, p.level, count(*) AS group_attempts
    FROM student_attempts a
    JOIN train_problems p USING (problem_id)
    GROUP BY ALL
)
SELECT
    c.student,
    c.subject,
    c.level,
    c.error_type,
    c.errors,
    sum(c.errors) OVER (PARTITION BY c.student, c.subject, c.level)::BIGINT AS group_errors,
    c.errors / sum(c.errors) OVER (PARTITION BY c.student, c.subject, c.level) AS share_in_group,
    c.errors / sum(c.errors) OVER (PARTITION BY c.student) AS share_overall,
    a.group_attempts,
    c.errors / a.group_attempts AS rate_per_attempt
FROM counts c
LEFT JOIN attempts a
    ON a.student = c.student AND a.subject IS NOT DISTINCT FROM c.subject AND a.level IS NOT DISTINCT FROM c.level
ORDER BY c.student, c.subject NULLS LAST,
         try_cast(regexp_extract(c.level, '[0-9]+(\.[0-9]+)?') AS DOUBLE) NULLS LAST, c.level NULLS LAST,
         c.errors DESC, c.error_type;
