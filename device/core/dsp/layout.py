"""Index layout of the small arrays the FxLMS kernel shares with its owner.

The kernel takes its settings in `params` (written by `AncEngine`, read at every block)
and keeps its scalar state in `status` and its buffer cursors in `cursors`. Plain arrays
with named indices keep the kernel a single nogil call with a handful of arguments, and let
the owner change a setting between blocks without a lock: one float store is atomic.
"""

# params: settings, written by the owner between blocks
P_STEP = 0               # normalized step size mu (current; the watchdog lowers `status[S_STEP]` instead)
P_LEAKAGE = 1            # per-sample weight decay
P_REGULARIZATION = 2     # added to the filtered-reference power in the normalization
P_USER_TARGET = 3        # 0..1: enabled * intensity
P_USER_RATE = 4          # per-sample increment of the user gain towards its target
P_FADE_RATE = 5          # per-sample increment of the safety gain on fade-in/out
P_TRIP_RATE = 6          # per-sample decrement of the safety gain when the watchdog trips
P_CEILING = 7            # linear peak ceiling of the speaker signal
P_RELEASE = 8            # limiter gain recovery coefficient per sample (0..1)
P_RISE = 9               # linear power factor over the uncontrolled level that counts as divergence
P_HOLD = 10              # samples the rise (or heavy limiting) must last before a trip
P_MAX_NORM = 11          # L2 norm of the weights above which the filter is reset
P_BACKOFF = 12           # step-size factor applied after each trip
P_MIN_STEP = 13          # floor of the backed-off step size
P_BASELINE = 14          # samples muted at start to measure the uncontrolled level
P_POWER_COEF = 15        # one-pole smoothing coefficient of the power trackers
P_STOP = 16              # 1.0 = fade out and stay silent
P_ADAPT = 17             # 1.0 = adapt the weights, 0.0 = freeze them
P_FLOOR = 18             # power floor (full scale = 1) under which the watchdog ignores the error level
P_HP_B0 = 19             # reference high-pass biquad (b0, b1, b2, a1, a2; a0 = 1)
P_HP_B1 = 20
P_HP_B2 = 21
P_HP_A1 = 22
P_HP_A2 = 23
P_SLOW_COEF = 24         # one-pole smoothing coefficient of the slow (sustained-rise) power trackers
P_SLOW_RISE = 25         # linear power factor over the uncontrolled level that counts as a sustained rise
P_SLOW_HOLD = 26         # samples a sustained rise must last before a trip
P_HEAR_TARGET = 27       # 0..1: target gain of the hear-through path (ramped like the user gain)
P_UPDATE_BLOCK = 28      # samples per partitioned frequency-domain update (0 = time-domain update every sample)
P_BIN_FLOOR = 29         # partitioned update: floor of the per-bin power, as a fraction of the mean bin power
P_OUTPUT_SCALE = 30      # 0..1: no-harm scale of the anti-noise (the worker's, ramped like the user gain; adaptation ignores it)
P_DELAY_TOLERANCE = 31   # partitioned update: samples the estimate's delay may be off; bins whose phase that could turn
                         # more than 60 degrees are not updated (0 = update every bin)
P_VSS_COEF = 32          # time-domain update, variable step: per-block smoothing coefficient of the gradient (0 = fixed step)
P_VSS_CONSISTENCY = 33   # variable step: the gradient consistency at and above which the full step is used
P_VSS_MIN = 34           # variable step: the smallest fraction of the step it may choose
P_VSS_RISE = 35          # variable step: the most its fraction may grow from one block to the next (factor; 0 = no limit)
P_BAND_B0 = 36          # time-domain update: low-pass biquad (b0, b1, b2, a1, a2; a0 = 1) the update sees the filtered
P_BAND_B1 = 37          # reference and the modified error through, so that it adapts only in the band the estimate's
P_BAND_B2 = 38          # delay tolerance trusts (`P_DELAY_TOLERANCE`); b0 = 0: the full band
P_BAND_A1 = 39
P_BAND_A2 = 40
P_BAND_LEAK = 41         # band-limited update: per-sample decay rate of the weights' response where the
                         # tolerated delay error could turn the phase past 90 degrees (0 = no leak)
P_LEAK_B0 = 42           # its low-pass biquad at that 90-degree point (b0, b1, b2, a1, a2; a0 = 1)
P_LEAK_B1 = 43
P_LEAK_B2 = 44
P_LEAK_A1 = 45
P_LEAK_A2 = 46
P_AVERAGE_COEF = 47      # time-domain update with the variable step: per-block coefficient of the average of the
                         # weights the speaker plays while the step is at its floor (0 = play the adapting weights)
N_PARAMS = 48
# The band leak runs once this many adapted samples have accumulated (it is two passes over the
# weights: every block would double the kernel's cost at 1024 taps).
BAND_LEAK_SAMPLES = 512
# Samples the leak's forward pass runs on past the last tap (zeros in, its ring-down out), so that
# the backward pass sees the whole low-passed response there: cut short, the last taps' in-band
# response leaked too.
BAND_LEAK_TAIL = 64

# The time-domain update's band-limited signals live at the tail of `update_state`: the band
# leak's scratch (taps + BAND_LEAK_TAIL floats), the low-passed filtered-reference history (a double-length ring
# beside the filtered buffer's, same cursor and length) and then these states of the two low-passes.
BAND_STATE = 8
B_REFERENCE_X1 = 0       # low-pass of the filtered reference: last two inputs and outputs
B_REFERENCE_X2 = 1
B_REFERENCE_Y1 = 2
B_REFERENCE_Y2 = 3
B_ERROR_X1 = 4           # low-pass of the modified error: last two inputs and outputs
B_ERROR_X2 = 5
B_ERROR_Y1 = 6
B_ERROR_Y2 = 7

# status: scalar state, written by the kernel
S_MODE = 0               # MODE_* below
S_USER_GAIN = 1          # current user gain (ramps towards P_USER_TARGET)
S_SAFETY_GAIN = 2        # current safety gain (fades)
S_LIMITER_GAIN = 3       # current limiter gain (1 = not limiting)
S_XF_POWER = 4           # sum of squares of the filtered reference over the filter length
S_ERROR_POWER = 5        # smoothed error-mic power
S_REFERENCE_POWER = 6    # smoothed reference-mic power
S_BASELINE_ERROR = 7     # sum of squared error during the baseline
S_BASELINE_REFERENCE = 8 # sum of squared reference during the baseline
S_BASELINE_COUNT = 9     # samples measured so far
S_RATIO = 10             # uncontrolled error power / reference power (from the baseline)
S_HOLD = 11              # samples the divergence symptom has lasted
S_STEP = 12              # step size in force (P_STEP unless backed off)
S_TRIPS = 13             # watchdog trips so far
S_SAMPLES = 14           # samples processed
S_BAND_LEAK_COUNT = 15   # band-limited update: adapted samples since the band leak last ran
S_NONFINITE_INPUTS = 16  # input samples replaced because they were NaN/Inf
S_LIMITED_SAMPLES = 17   # samples on which the limiter reduced the gain
S_WEIGHT_NORM = 18       # L2 norm of the weights at the end of the last block
S_PEAK_OUT = 19          # largest |speaker sample| so far
S_EVENTS = 20            # events written so far (the ring index is this modulo its capacity)
S_LIMIT_HOLD = 21        # samples of heavy limiting in a row
S_CONTROL_SAMPLES = 22   # samples with the anti-noise on (safety gain > 0)
S_HP_X1 = 23             # reference high-pass state: last two inputs and outputs
S_HP_X2 = 24
S_HP_Y1 = 25
S_HP_Y2 = 26
S_SLOW_ERROR = 27        # slowly smoothed error-mic power (sustained-rise watchdog)
S_SLOW_REFERENCE = 28    # slowly smoothed reference power (after feedback neutralization)
S_SLOW_HOLD = 29         # samples the sustained rise has lasted
S_HEAR_GAIN = 30         # current hear-through gain (ramps towards P_HEAR_TARGET)
S_UPDATE_FILL = 31       # partitioned update: modified errors collected of the current update block
S_UPDATE_BLOCKS = 32     # partitioned update: block updates so far (bias correction of the bin power)
S_SLOW_DISTURBANCE = 33  # slowly smoothed power of d_hat = e - s_hat * y_played (sustained-rise watchdog)
S_OUTPUT_GAIN = 34       # current no-harm output gain (ramps towards P_OUTPUT_SCALE)
S_VSS_FACTOR = 35        # variable step: the fraction of the step in force
S_VSS_RAW = 36           # variable step: smoothed squared norm of the blocks' normalized gradients
S_VSS_BLOCKS = 37        # variable step: blocks smoothed so far (bias correction)
S_VSS_TRIPS = 38         # variable step: watchdog trips when the block started (a reset voids the block's gradient)
S_VSS_STEP = 39          # variable step: the step the last block adapted with (0: it did not adapt)
S_VSS_CONSISTENCY = 40   # variable step: |smoothed gradient|^2 / smoothed |gradient|^2, 1 = every block agrees
N_STATUS = 41

# cursors: positions in the double-length circular buffers
C_REFERENCE = 0
C_FILTERED = 1
C_OUTPUT = 2
N_CURSORS = 3

# modes
MODE_BASELINE = 0.0      # muted, measuring the uncontrolled level
MODE_RUN = 1.0           # controlling (fading in if the safety gain is below 1)
MODE_TRIP = 2.0          # fading out fast after a watchdog trip, weights frozen
MODE_STOP = 3.0          # fading out on request

# event codes (events[i] = sample index, code, value, step size after)
EVENT_ERROR_RISE = 1     # value: error power over the uncontrolled level, dB
EVENT_WEIGHT_NORM = 2    # value: weight norm
EVENT_NONFINITE = 3      # value: 0
EVENT_LIMITING = 4       # value: limiter gain in dB
EVENT_GAVE_UP = 5        # tripped again at the minimum step: the secondary path no longer matches
EVENT_SUSTAINED_RISE = 6 # value: slow error power over the uncontrolled level, dB
EVENT_NAMES = {
    EVENT_SUSTAINED_RISE: "sustained_rise",
    EVENT_ERROR_RISE: "error_rise",
    EVENT_WEIGHT_NORM: "weight_norm",
    EVENT_NONFINITE: "non_finite",
    EVENT_LIMITING: "sustained_limiting",
    EVENT_GAVE_UP: "stopped_reidentify",
}
EVENT_FIELDS = 4
