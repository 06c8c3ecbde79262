/*  hwait - answer an HTTP request when a kernel goes through its next transition.

    REST calls such as "restart" or "delete" answer only once the kernel is ready again
    or gone. hwait holds the request meanwhile, stops waiting if the client disconnects,
    and calls the API's reply function with the outcome.
*/
#ifndef HWAIT_H
#define HWAIT_H

#include "../http/hreq.h"
#include "../kernels/kentry.h"

//  Write the response for req (the kernel reached result). op and arg are the caller's.
typedef void(hwait_reply_fn)(hreq_t *req, kentry_t *entry, kwait_result_t result, int op, void *arg);

//  Hold req until entry's next transition, then call reply. On allocation failure it
//  answers 500 at once.
void hwait_start(hreq_t *req, kentry_t *entry, hwait_reply_fn *reply, int op, void *arg);

#endif
