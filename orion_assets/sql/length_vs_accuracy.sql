-- length_vs_accuracy.sql: are long answers more often right or wrong, per model?
--
-- orion.benchmark_predictions (every graded sample of every model on every benchmark, pooled
-- over the benchmarks) bucketed by the answer's length n_tokens in powers of two:
-- [1, 2), [2, 4), ..., [1024, 2048), ...; n_tokens = 0 gets bucket [0, 1) and an unknown length
-- the NULL bucket, so that the buckets of a model add up to all its predictions. A model is one
-- checkpoint: a student, a variant and an SFT seed (students and seeds are not pooled); the
-- variants come in the order of orion.vocabulary_variants (one it lacks after).
--
-- Columns:
--   student, variant, seed  the model (the checkpoint of benchmark_predictions.checkpoint_id)
--   bucket_lo, bucket_hi  the length bucket [bucket_lo, bucket_hi) in tokens (NULL: unknown)
--   bucket                the same as text, e.g. '[256, 512)'
--   predictions           graded samples in the bucket
--   correct               of them, correct
--   accuracy              correct / predictions (ungraded samples count as not correct)
--   truncation_rate       share that stopped at the token limit (finish_reason = 'length')
--   share_of_model        predictions / all predictions of the model (sums to 1 per model)
--
-- Run (see sql/README.md):
--   orion sql sql/length_vs_accuracy.sql
--   duckdb -readonly data/orion_store.duckdb -f sql/length_vs_accuracy.sql

USE orion;

WITH bucketed AS (
    SELECT
        student,
        variant,
        seed,
        correct,
        finish_reason,
        CASE
            WHEN n_tokens IS NULL THEN NULL
            WHEN n_tokens < 1 THEN 0
            ELSE (2 ** floor(log2(n_tokens)))::BIGINT
        END AS bucket_lo
    FROM benchmark_predictions
),
buckets AS (
    SELECT
        student,
        variant,
        seed,
        bucket_lo,
        CASE WHEN bucket_lo = 0 THEN 1 ELSE 2 * bucket_lo END AS bucket_hi,
        CASE WHEN bucket_lo IS NULL THEN 'unknown'
             ELSE printf('[%d, %d)', bucket_lo, CASE WHEN bucket_lo = 0 THEN 1 ELSE 2 * bucket_lo END)
        END AS bucket,
        count(*) AS predictions,
        count(*) FILTER (WHERE correct) AS correct,
        count(*) FILTER (WHERE correct) / count(*) AS accuracy,
        count(*) FILTER (WHERE finish_reason = 'length') / count(*) AS truncation_rate,
        count(*) / sum(count(*)) OVER (PARTITION BY student, variant, seed) AS share_of_model
    FROM bucketed
    GROUP BY student, variant, seed, bucket_lo
)
SELECT b.*
FROM buckets b
LEFT JOIN vocabulary_variants v ON v.variant = b.variant
ORDER BY b.student, v.position NULLS LAST, b.variant, b.seed, b.bucket_lo NULLS LAST;
