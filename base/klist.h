/*  klist - intrusive doubly linked lists (the Linux kernel's list_head shape).

    Embed a klist_t in each element and one in the owner as the list head; an element
    knows whether it is linked, unlinks itself in O(1), and iterating with
    klist_foreach_safe lets the body unlink (or free) the current element. One helper instead of a
    hand-written list in every module.
*/
#ifndef KLIST_H
#define KLIST_H

#include <stdbool.h>
#include <stddef.h>

typedef struct klist_s {
    struct klist_s *prev, *next;
} klist_t;

//  A head (or an unlinked element) points to itself. Zero-initialized is NOT valid:
//  call klist_init first.
static inline void klist_init(klist_t *head)
{
    head->prev = head->next = head;
}

static inline bool klist_empty(const klist_t *head)
{
    return head->next == head;
}

//  Whether an element (initialized with klist_init) is in some list.
static inline bool klist_linked(const klist_t *item)
{
    return item->next && item->next != item;
}

static inline void klist_insert_(klist_t *item, klist_t *prev, klist_t *next)
{
    next->prev = item;
    item->next = next;
    item->prev = prev;
    prev->next = item;
}

static inline void klist_push_back(klist_t *head, klist_t *item)
{
    klist_insert_(item, head->prev, head);
}

static inline void klist_push_front(klist_t *head, klist_t *item)
{
    klist_insert_(item, head, head->next);
}

//  Unlink item (a no-op if it is not linked); it is left initialized.
static inline void klist_remove(klist_t *item)
{
    if (!item->next || item->next == item) return;
    item->prev->next = item->next;
    item->next->prev = item->prev;
    item->prev = item->next = item;
}

//  Move every item of from to the empty list to; from is left empty.
static inline void klist_take_all(klist_t *to, klist_t *from)
{
    klist_init(to);
    if (klist_empty(from)) return;
    to->next = from->next;
    to->prev = from->prev;
    to->next->prev = to;
    to->prev->next = to;
    klist_init(from);
}

static inline klist_t *klist_first(const klist_t *head)
{
    return klist_empty(head) ? NULL : head->next;
}

static inline size_t klist_count(const klist_t *head)
{
    size_t n = 0;
    for (const klist_t *i = head->next; i != head; i = i->next) n++;
    return n;
}

//  The element that embeds a link: klist_entry(link, type, member).
#define klist_entry(link, type, member) ((type *) ((char *) (link) - offsetof(type, member)))

//  Iterate links: klist_t *it; klist_foreach(it, &owner->items) { T *x = klist_entry(it, T, link); }
#define klist_foreach(it, head) for ((it) = (head)->next; (it) != (head); (it) = (it)->next)
//  The same where the body may unlink (or free) the current element.
#define klist_foreach_safe(it, tmp, head) \
    for ((it) = (head)->next, (tmp) = (it)->next; (it) != (head); (it) = (tmp), (tmp) = (it)->next)

#endif
