"""Pure text functions on questions: words and first words (`tokens`), rule rewrites of a question's form
(`rewrite`). A leaf package: it imports nothing else of unmirage, so data, analysis, benchmarks and attacks
can all build on it."""
