/* comm_nccl.h: comm.h's collectives over NCCL, one GPU per rank, all in one
 * process (ncclCommInitAll), each rank driven by its own host thread.
 *
 * Each rank's collectives run on a CUDA stream of their own on the rank's
 * device; a call first waits for the rank's backend (synchronize()), so the
 * buffers it reads are written, and returns once its stream is idle, so the
 * backend's next ops see the result. That costs a host round trip per call;
 * ordering the NCCL stream after the backend's stream with events would not,
 * and is the next step once the backend exposes its stream.
 *
 *   all_reduce_sum   ncclAllReduce(ncclFloat, ncclSum), in place
 *   exchange_counts  one int32 to and from every peer: a group of
 *                    ncclSend/ncclRecv through a small device buffer
 *   all_to_all       a group (ncclGroupStart, per peer with rows to move an
 *                    ncclSend and an ncclRecv of bytes, ncclGroupEnd); a
 *                    rank's own rows are copied on its stream (or left alone
 *                    when they already are in place)
 *   barrier          an all-reduce of one float, then the stream is waited on
 *
 * Only in builds with CUDA and NCCL (CASCADE_HAVE_NCCL).
 */
#ifndef CASCADE_NATIVE_COMM_NCCL_H
#define CASCADE_NATIVE_COMM_NCCL_H

#include "engines/native/backend/comm.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A group of world ranks over CUDA devices devices[0..world); out[r] drives
 * devices[r]. 0, or -1 with NCCL's or CUDA's reason in err. The handles
 * may then move to the ranks' threads, one each. */
int native_comm_nccl_new_all(int world, const int *devices, struct native_comm **out, char *err,
                             size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
