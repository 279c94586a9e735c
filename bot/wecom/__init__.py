"""The WeCom API client: wechatpy clients per secret (token cache in Redis or memory), the API groups
wechatpy lacks, written in its style, and the per-corp rate limiter."""
