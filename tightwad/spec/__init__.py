"""Pure speculative-decoding algorithms: no I/O, numpy only, randomness always injected.

Modules: ``sampling`` (the target's sampling chain), ``acceptance`` (greedy, sample-and-match
and rejection-sampling verification), ``proposers`` (n-gram lookup, predicted outputs),
``draft_control`` (draft length from measured goodput), ``stops`` (stop strings, EOS,
max_tokens), ``detok`` (incremental UTF-8 detokenizing).
"""
