"""Several ears in one audio block: one nogil numba call runs `engine_block` for each ear.

A headphone has two earcups on one sound card; each has its own reference and error mic,
speaker, paths, weights, watchdog, limiter and fades, and its own re-identification of the
secondary path (command word, probe, candidate estimate). Their state is stacked in 2-D arrays
(ears x length), each ear's row padded with zeros to the longest ear's length, and
`lengths[ear, k]` says how much of row `ear` of the k-th stacked array is that ear's own
(the `LEN_*` columns below): the kernel hands `engine_block` exactly the arrays it would get
for that ear alone, so no ear pays for another's longer paths, and one ear's state never
reaches another's. Nothing is shared between ears inside the kernel: a speaker's crosstalk
to the other ear's error mic (its anti-noise, and its probe while that ear re-identifies) is
part of that ear's disturbance, as on the rig.
"""

from __future__ import annotations

import numba as nb

from device.core.dsp.tracking import engine_block

# Columns of `lengths`: the used length of each ear's row of the stacked 1-D state arrays.
LEN_WEIGHTS = 0
LEN_SECONDARY = 1
LEN_FEEDBACK = 2
LEN_REFERENCE_BUFFER = 3
LEN_FILTERED_BUFFER = 4
LEN_OUTPUT_BUFFER = 5
LEN_HEAR_THROUGH = 6
LEN_PROBE = 7
LEN_SECONDARY_CANDIDATE = 8
LEN_HEAR_CANDIDATE = 9
LEN_WEIGHTS_CANDIDATE = 10
N_LENGTHS = 11


@nb.njit(cache=True, nogil=True)
def process_ears(
    references,
    errors,
    outs,
    lengths,
    tracking,
    probes,
    secondary_candidates,
    hear_candidates,
    weights_candidates,
    weights,
    secondary_paths,
    feedback_paths,
    reference_buffers,
    filtered_buffers,
    output_buffers,
    params,
    status,
    cursors,
    events,
    hear_throughs,
    update_states,
    twiddles,
):
    """One block for every ear. references, errors, outs: (ears x block), outs written.
    lengths: (ears x N_LENGTHS) int64. probes, the candidates, weights ... output_buffers,
    hear_throughs: (ears x longest) rows, padded. tracking, params, status, cursors: (ears x
    layout size); events: (ears x capacity x fields); update_states, twiddles: (ears x size),
    the same size for every ear (the update block is the stream's). Row `ear` of each is what
    `engine_block` takes for that ear."""
    for ear in range(references.shape[0]):
        n = lengths[ear]
        engine_block(
            references[ear], errors[ear], outs[ear],
            tracking[ear],
            probes[ear, :n[LEN_PROBE]],
            secondary_candidates[ear, :n[LEN_SECONDARY_CANDIDATE]],
            hear_candidates[ear, :n[LEN_HEAR_CANDIDATE]],
            weights_candidates[ear, :n[LEN_WEIGHTS_CANDIDATE]],
            weights[ear, :n[LEN_WEIGHTS]],
            secondary_paths[ear, :n[LEN_SECONDARY]],
            feedback_paths[ear, :n[LEN_FEEDBACK]],
            reference_buffers[ear, :n[LEN_REFERENCE_BUFFER]],
            filtered_buffers[ear, :n[LEN_FILTERED_BUFFER]],
            output_buffers[ear, :n[LEN_OUTPUT_BUFFER]],
            params[ear], status[ear], cursors[ear], events[ear],
            hear_throughs[ear, :n[LEN_HEAR_THROUGH]],
            update_states[ear], twiddles[ear],
        )
