/**
 * The one pattern of a DNS label as hatch-proxy accepts it: a route's subdomain (Hatch's rule:
 * lowercase letters, digits and inner hyphens, at most 63 characters), and each label of the base domain.
 */
export const SUBDOMAIN_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
